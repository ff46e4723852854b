"""
Pause latency: from POST /v1/jobs/{id}/pause to every process of the job stopped.

    /work/venv/bin/python bench/pause.py [--jobs 20] [--runs 3] [--quick]

--jobs jobs of workflows/sleep-loop.xml (".sleeper.period" 100 ms, a million
iterations) are queued with [supervisor] max_running = --jobs so that all run
at once.  When all are RUNNING, the driver pauses them one at a time: it
takes the clock, POSTs /pause on its keep-alive connection and polls, with
psutil, every process whose environment has KREE_JOB_ID equal to the job's
id (found before the pause, and checked again by a full scan afterwards)
until all show as stopped (SIGSTOP).  Latency = that moment minus the start
of the POST; the time until the POST's answer is reported too.  Then every
job is killed (POST /kill) and any engine left is SIGKILLed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402

import harness  # noqa: E402
from harness import Kreed, ms, percentile  # noqa: E402

GOAL = 20.0  # ms, p99
STOPPED = {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP}
PARAMETERS = {".sleeper.period": 100, ".sleeper.SDF Director.iterations": 1_000_000}


def add_arguments(parser) -> None:
    parser.add_argument("--jobs", type=int, default=20, help="jobs running at once, each paused once")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for all RUNNING")


def processes_by_job(job_ids: set[str]) -> dict[str, list[psutil.Process]]:
    """Every live process of this user whose environment marks one of the jobs."""
    found: dict[str, list[psutil.Process]] = {job: [] for job in job_ids}
    uid = harness.os.getuid()
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            job = proc.environ().get(harness.JOB_ENV)
            if job in found and proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                found[job].append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def all_stopped(procs: list[psutil.Process]) -> bool:
    for proc in procs:
        try:
            if proc.status() not in STOPPED:
                return False
        except psutil.NoSuchProcess:
            continue  # gone: nothing left to stop
    return True


def one_run(args) -> dict:
    config = f"[supervisor]\nmax_running = {args.jobs}\n"
    with Kreed(config_text=config, keep=args.keep, store_url=args.store_url) as kreed:
        client = kreed.client()
        uri = client.upload("sleep-loop.xml")
        ids = []
        for _ in range(args.jobs):
            job = client.call("POST", "/v1/jobs", {"workflow": uri, "queue": True,
                                                   "parameters": PARAMETERS}, expect=(201,))
            ids.append(job["id"])
            kreed.job_ids.add(job["id"])
        wanted = set(ids)
        harness.wait_until_running(client, wanted, processes_by_job,
                                   time.monotonic() + args.timeout)
        procs = processes_by_job(wanted)
        time.sleep(0.5)  # let the last engines get past their start

        latencies, answers, processes = [], [], 0
        for job_id in ids:
            mine = procs[job_id]
            processes += len(mine)
            t0 = time.perf_counter()
            reply = client.call("POST", f"/v1/jobs/{job_id}/pause")
            t_answer = time.perf_counter()
            while not all_stopped(mine):
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError(f"job {job_id} not stopped 10 s after its pause")
                time.sleep(0.0002)
            t_stopped = time.perf_counter()
            if reply.get("state") not in (None, "PAUSED"):
                raise RuntimeError(f"pause of {job_id} answered {reply}")
            latencies.append(t_stopped - t0)
            answers.append(t_answer - t0)

        # A full scan afterwards: every process of every job must be stopped.
        after = processes_by_job(wanted)
        unstopped = sum(1 for found in after.values() for p in found if not all_stopped([p]))

        for job_id in ids:
            client.call("POST", f"/v1/jobs/{job_id}/kill", expect=(200, 409))
        client.close()

    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "answer_p50_ms": percentile(answers, 50) * 1000,
        "answer_p99_ms": percentile(answers, 99) * 1000,
        "jobs": len(ids),
        "processes": processes,
        "unstopped_after": unstopped,
    }


def summary(m: dict) -> str:
    return (f"pause: {m['jobs']:.0f} running jobs, POST to all processes stopped p50 {ms(m['p50_ms'])}, "
            f"p99 {ms(m['p99_ms'])} (goal <= {GOAL:.0f} ms), max {ms(m['max_ms'])}; "
            f"API answer p50 {ms(m['answer_p50_ms'])} p99 {ms(m['answer_p99_ms'])}")


def main(argv=None) -> None:
    args = harness.arguments(__doc__.strip().splitlines()[0], add_arguments, argv)
    if args.quick:
        args.jobs = min(args.jobs, 3)
    harness.run_benchmark(
        "pause", args, lambda i: one_run(args),
        config={"jobs": args.jobs, "workflow": "sleep-loop.xml", "parameters": PARAMETERS},
        summary=summary,
        goals={"p99_ms": f"<= {GOAL:.0f}"},
    )


if __name__ == "__main__":
    main()
