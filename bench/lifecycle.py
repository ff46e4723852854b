"""
Job life cycle end to end: N trivial jobs submitted queued, until all FINISHED.

    /work/venv/bin/python bench/lifecycle.py [--jobs 100] [--clients 4] [--max-running 2] [--runs 3] [--quick]

hello.xml is uploaded once; --jobs jobs are created with queue=true as fast
as --clients keep-alive connections allow, and the driver polls
GET /v1/jobs?state=FINISHED (pages of 500) until all have finished.
[supervisor] max_running = 2 (the cores of the reference machine).

Reported:
  - jobs_per_second: jobs / (first POST .. last job seen FINISHED), end to end;
  - daemon_cpu_ms_per_job: CPU time (user+system, psutil) of the kreed
    process alone over that span, per job.  The engines are separate processes
    and are not counted; neither are the validation subprocesses;
  - queued_to_running p50/p99: from each job's job.state events, the time of
    its QUEUED event to that of its RUNNING event.  With N jobs queued at once
    and 2 slots this is mostly time spent waiting in the queue;
  - dispatch p50/p99: the part of that wait which is the daemon's own: from the
    moment the job was queued *and* a slot was free (the later of the two,
    reconstructed from every job's events) to its RUNNING event;
  - engine_start_ms: for context, the wall time of one
    `python -m kree.engine validate workflows/hello.xml` (interpreter start,
    imports, parse), the floor of any engine run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import Kreed, ms, parse_time, percentile  # noqa: E402

GOAL_RATE = 200.0  # jobs/s
GOAL_CPU = 3.0  # daemon ms per job
GOAL_DISPATCH = 20.0  # ms, p99
TERMINAL = {"FINISHED", "FAILED", "ABORTED"}


def add_arguments(parser) -> None:
    parser.add_argument("--jobs", type=int, default=100, help="jobs per run")
    parser.add_argument("--clients", type=int, default=4, help="submitting threads (one connection each)")
    parser.add_argument("--max-running", type=int, default=2, help="[supervisor] max_running")
    parser.add_argument("--timeout", type=float, default=100.0, help="seconds to wait for all to finish")
    parser.add_argument("--sandbox", choices=("landlock", "none"), default="landlock",
                        help="[sandbox] mode: run it once with each for the sandbox's cost")


def engine_start_ms() -> float:
    t0 = time.perf_counter()
    subprocess.run([harness.PYTHON, "-m", "kree.engine", "validate", str(harness.WORKFLOWS / "hello.xml")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=harness.REPO)
    return (time.perf_counter() - t0) * 1000


def transitions(events: list[dict]) -> list[tuple[float, str, str]]:
    """(time, from, to) of each job.state event."""
    return [(parse_time(e["time"]), e["data"].get("from"), e["data"]["to"])
            for e in events if e["type"] == "job.state"]


def dispatch_waits(per_job: dict[str, list[tuple[float, str, str]]], max_running: int) -> list[float]:
    """
    For each RUNNING transition: seconds since the job was queued and a slot
    was free (the later of the two), replaying every job's transitions in
    time order.  A slot is taken from RUNNING until a terminal state (PAUSED
    and WAITING do not occur with hello.xml).
    """
    timeline = sorted((t, job, src, dst) for job, ts in per_job.items() for (t, src, dst) in ts)
    running: set[str] = set()
    queued_at: dict[str, float] = {}
    free_since = timeline[0][0] if timeline else 0.0
    waits = []
    for t, job, _src, dst in timeline:
        if dst == "QUEUED":
            queued_at[job] = t
        elif dst == "RUNNING":
            if job in queued_at:
                waits.append(t - max(queued_at.pop(job), free_since))
            running.add(job)
            if len(running) >= max_running:
                free_since = float("inf")  # no slot until one ends
        elif dst in TERMINAL and job in running:
            was_full = len(running) >= max_running
            running.discard(job)
            if was_full:
                free_since = t
    return [max(w, 0.0) for w in waits]


def one_run(args) -> dict:
    config = (f"[supervisor]\nmax_running = {args.max_running}\nmonitor_interval_seconds = 2\n"
              f"[sandbox]\nmode = \"{args.sandbox}\"\n")
    with Kreed(config_text=config, keep=args.keep, store_url=args.store_url) as kreed:
        setup = kreed.client()
        uri = setup.upload("hello.xml")
        # Warm the workflow check (cached per version) with a job left NEW.
        setup.call("POST", "/v1/jobs", {"workflow": uri}, expect=(201,))
        clients = [kreed.client() for _ in range(args.clients)]
        for client in clients:
            client.call("GET", "/v1/service-info")

        counter = iter(range(args.jobs))
        lock = threading.Lock()
        ids: list[str] = []

        def submitter(i: int) -> None:
            client = clients[i]
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                job = client.call("POST", "/v1/jobs", {"workflow": uri, "queue": True}, expect=(201,))
                with lock:
                    ids.append(job["id"])
                    kreed.job_ids.add(job["id"])

        cpu0 = kreed.cpu_seconds()
        t0 = time.perf_counter()
        harness.run_threads(len(clients), submitter)
        t_submitted = time.perf_counter()
        wanted = set(ids)
        deadline = t0 + args.timeout
        while True:
            finished = {j["id"] for j in setup.jobs_in_state("FINISHED")} & wanted
            if len(finished) == len(wanted):
                break
            if time.perf_counter() > deadline:
                failed = {j["id"] for j in setup.jobs_in_state("FAILED")} & wanted
                raise RuntimeError(f"after {args.timeout} s: {len(finished)} of {len(wanted)} "
                                   f"FINISHED, {len(failed)} FAILED")
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        cpu = kreed.cpu_seconds() - cpu0

        per_job = {job_id: transitions(setup.events(job_id)) for job_id in ids}
        queue_to_run = []
        engine_life = []
        for ts in per_job.values():
            queued = next(t for t, _, dst in ts if dst == "QUEUED")
            running = next(t for t, _, dst in ts if dst == "RUNNING")
            finished = next(t for t, _, dst in ts if dst == "FINISHED")
            queue_to_run.append(running - queued)
            # RUNNING is written before the engine starts: this is its start,
            # its (trivial) run and its exit, as the daemon saw them.
            engine_life.append(finished - running)
        dispatch = dispatch_waits(per_job, args.max_running)
        for client in clients + [setup]:
            client.close()
        return {
            "jobs_per_second": args.jobs / elapsed,
            "seconds": elapsed,
            "submit_seconds": t_submitted - t0,
            "daemon_cpu_ms_per_job": cpu * 1000 / args.jobs,
            "queued_to_running_p50_ms": percentile(queue_to_run, 50) * 1000,
            "queued_to_running_p99_ms": percentile(queue_to_run, 99) * 1000,
            "dispatch_p50_ms": percentile(dispatch, 50) * 1000,
            "dispatch_p99_ms": percentile(dispatch, 99) * 1000,
            "running_to_finished_p50_ms": percentile(engine_life, 50) * 1000,
            "running_to_finished_p99_ms": percentile(engine_life, 99) * 1000,
        }


def summary(m: dict) -> str:
    return (
        f"lifecycle: {m['jobs_per_second']:.1f} jobs/s end to end (goal >= {GOAL_RATE:.0f}), "
        f"daemon CPU {m['daemon_cpu_ms_per_job']:.1f} ms/job (goal <= {GOAL_CPU:.0f}); "
        f"dispatch p50 {ms(m['dispatch_p50_ms'])} p99 {ms(m['dispatch_p99_ms'])} "
        f"(goal p99 <= {GOAL_DISPATCH:.0f} ms); QUEUED->RUNNING incl. queue wait "
        f"p50 {ms(m['queued_to_running_p50_ms'])} p99 {ms(m['queued_to_running_p99_ms'])}; "
        f"engine start (validate hello.xml) {ms(m['engine_start_ms'])}; "
        f"RUNNING->FINISHED (engine start, run, exit) p50 {ms(m['running_to_finished_p50_ms'])} "
        f"p99 {ms(m['running_to_finished_p99_ms'])}"
    )


def main(argv=None) -> None:
    args = harness.arguments(__doc__.strip().splitlines()[0], add_arguments, argv)
    if args.quick:
        args.jobs = min(args.jobs, 10)
        args.clients = min(args.clients, 2)
    start_ms = engine_start_ms()

    def run(_index: int) -> dict:
        return {**one_run(args), "engine_start_ms": start_ms}

    harness.run_benchmark(
        "lifecycle", args, run,
        config={"jobs": args.jobs, "clients": args.clients, "max_running": args.max_running,
                "workflow": "hello.xml", "sandbox": args.sandbox},
        summary=summary,
        goals={"jobs_per_second": f">= {GOAL_RATE:.0f}",
               "daemon_cpu_ms_per_job": f"<= {GOAL_CPU:.0f}",
               "dispatch_p99_ms": f"<= {GOAL_DISPATCH:.0f}"},
    )


if __name__ == "__main__":
    main()
