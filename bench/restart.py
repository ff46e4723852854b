"""
Restart: kill -9 of kreed with N running engines, then the time until every job is supervised again.

    /work/venv/bin/python bench/restart.py [--jobs 200] [--runs 1] [--quick]

--jobs jobs of workflows/sleep-loop.xml (".sleeper.period" --period ms,
100,000 iterations: they outlive the benchmark) are queued with [supervisor]
max_running = --jobs and monitor_interval_seconds = 2, so that all run at
once.  When all are RUNNING and each has its engine process (found by its
KREE_JOB_ID environment marker, shown once the engine has exec'ed), the
driver notes each engine's pid, kills kreed with SIGKILL, reads each job's
last event seq from the store (nobody writes it now; through the loaded API
it would take minutes and be stale by the kill) and waits until --down
seconds (1) have passed since the kill, while the engines keep running and
appending to their events.jsonl.  Then it starts kreed again on the same
state directory and configuration (a new port, read from its new log; the
first is kept as kreed.1.err) and polls every job's GET
/v1/jobs/{id}/events?after=<that seq> until each shows a job.message applied
by the new daemon (its time after the kill): the daemon has applied what the
engine wrote while it was down and follows it again.

Figures: seconds from the restart command until the API answers (kreed logs
"running" once it has re-adopted every engine), and until every job is
supervised again, as the driver saw it (polling through the API: an upper
bound that includes the API's latency under load) and by the daemon's own
time of each job's first new message.  Checks (each must be 0): jobs lost
(not RUNNING afterwards, e.g. FAILED "lost during daemon restart"); events
missing or doubled (each job's event seqs must be 1..N and its Display
messages the consecutive ticks "0", "1", ...; the logs are read with the
query of GET /v1/jobs/{id}/events once kreed has been stopped with SIGTERM);
engines duplicated (a job with more than one engine process); engines
replaced (a job whose engine pid changed); engines that died while kreed was
down.  For context: kreed's CPU and the latency of GET /v1/jobs/{id}/state in
the steady state before the kill, and the time one /proc scan for a job's
processes takes (kree.backends.proctree.job_processes; the monitor makes one
such scan per interval for all its local jobs).  Then every engine is killed,
kreed stopped and the temporary directory removed.

The tick period is 1,000 ms by default, not 200: each tick is two engine
events (a message and a progress).  A first try at 200 ms (2,000 events/s
from 200 engines) kept kreed at its limit (about 1,450 events applied per
second) with only 150 of the 200 jobs started after 14 minutes and the API
taking seconds per request; a restart measured on a daemon that never
catches up says nothing.  At 1,000 ms, with --down 1 s, each engine has
written at least one tick while kreed was dead, so the first new message of
each job is one the daemon missed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
import sqlalchemy as sa  # noqa: E402

import harness  # noqa: E402
from harness import Kreed, parse_time, percentile  # noqa: E402
from kree.backends import proctree  # noqa: E402
from kree.store import model  # noqa: E402
from kree.store.engine import create_engine  # noqa: E402
from kree.store.events import EventsStore  # noqa: E402

GOAL = 5.0  # seconds until every job is supervised again
LOST = "lost during daemon restart"


def add_arguments(parser) -> None:
    parser.set_defaults(runs=1)  # heavy: one run unless asked
    parser.add_argument("--jobs", type=int, default=200, help="engines running when kreed is killed")
    parser.add_argument("--period", type=int, default=1000,
                        help="ms between two ticks of each engine (two events each)")
    parser.add_argument("--iterations", type=int, default=100_000, help="ticks of each job")
    parser.add_argument("--down", type=float, default=1.0, help="seconds kreed stays dead")
    parser.add_argument("--clients", type=int, default=4, help="threads polling after the restart")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to submit and get all RUNNING, and again for all supervised")


# -- processes ----------------------------------------------------------------------


def engines_by_job(job_ids: set[str]) -> dict[str, list[psutil.Process]]:
    """The live engine processes (python -m kree.engine) of each job, by KREE_JOB_ID."""
    found: dict[str, list[psutil.Process]] = {job: [] for job in job_ids}
    uid = os.getuid()
    for proc in psutil.process_iter(["uids", "cmdline"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            job = proc.environ().get(harness.JOB_ENV)
            if job not in found or "kree.engine" not in (proc.info["cmdline"] or []):
                continue
            if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                continue
            found[job].append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def restart(kreed: Kreed, timeout: float) -> tuple[float, float, float]:
    """
    Start kreed again after its kill -9: same --config and state directory, a
    new port from the new log (the first one is kept as kreed.1.err).  The time
    of the restart command (wall clock, monotonic clock) and the seconds until
    kreed runs (API up).
    """
    if kreed._stderr is not None:
        kreed._stderr.close()
        kreed._stderr = None
    kreed.stderr_path.rename(kreed.base / "kreed.1.err")
    kreed.port = None  # read again from the new log
    started_wall = time.time()
    started = time.monotonic()
    kreed.start(timeout=timeout)
    return started_wall, started, time.monotonic() - started


def progress(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)  # so that the clean-up in one_run runs


# -- the store, read while kreed is down --------------------------------------------------


def last_seqs(kreed: Kreed, job_ids: set[str]) -> dict[str, int]:
    """Each job's last event seq (0 if none)."""
    engine = create_engine(kreed.config.store_url)
    try:
        ev = model.events
        with engine.connect() as conn:
            rows = conn.execute(sa.select(ev.c.job_id, sa.func.max(ev.c.seq)).group_by(ev.c.job_id))
            found = {job: seq for job, seq in rows}
    finally:
        engine.dispose()
    return {job: found.get(job, 0) for job in job_ids}


def event_logs(kreed: Kreed, job_ids: list[str]) -> dict[str, list[dict]]:
    """Each job's events as GET /v1/jobs/{id}/events lists them (the same query)."""
    engine = create_engine(kreed.config.store_url)
    store = EventsStore(None)
    try:
        with engine.connect() as conn:
            return {job: [{"seq": e.seq, "type": e.type, "data": e.data}
                          for e in store.list_for_job_thd(conn, job, 0, 10**9)]
                    for job in job_ids}
    finally:
        engine.dispose()


# -- checks -------------------------------------------------------------------------------


def check_log(events: list[dict]) -> tuple[int, int]:
    """
    (events missing or doubled, messages missing or doubled) in one job's
    log: seqs must be 1..N; the Display's ticks "0", "1", ... none skipped,
    none twice.
    """
    seqs = [e["seq"] for e in events]
    seq_bad = (len(seqs) - len(set(seqs))) + ((max(seqs) - len(set(seqs))) if seqs else 0)
    if seqs != sorted(seqs):
        seq_bad += 1
    ticks, odd = [], 0
    for event in events:
        if event["type"] != "job.message":
            continue
        text = str(event["data"].get("text", ""))
        try:
            ticks.append(int(text))
        except ValueError:
            odd += 1  # not a tick: counted as wrong
    tick_bad = odd + (len(ticks) - len(set(ticks)))
    if ticks:
        tick_bad += (max(ticks) + 1) - len(set(ticks))
        if ticks != sorted(ticks):
            tick_bad += 1
    return seq_bad, tick_bad


# -- one run ---------------------------------------------------------------------------


def one_run(args) -> dict:
    parameters = {".sleeper.period": args.period, ".sleeper.SDF Director.iterations": args.iterations}
    config = f"[supervisor]\nmax_running = {args.jobs}\nmonitor_interval_seconds = 2\n"
    kreed = Kreed(config_text=config, keep=args.keep, store_url=args.store_url)
    try:
        kreed.start()
        client = kreed.client()
        uri = client.upload("sleep-loop.xml")
        ids = []
        t_submitted = time.monotonic()
        deadline = t_submitted + args.timeout
        for _ in range(args.jobs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ids)} of {args.jobs} jobs submitted after {args.timeout} s")
            job = client.call("POST", "/v1/jobs", {"workflow": uri, "queue": True,
                                                   "parameters": parameters}, expect=(201,))
            ids.append(job["id"])
            kreed.job_ids.add(job["id"])
        wanted = set(ids)
        progress(f"{len(ids)} jobs submitted in {time.monotonic() - t_submitted:.1f} s")
        harness.wait_until_running(client, wanted, engines_by_job, deadline, poll=0.2)
        engines = engines_by_job(wanted)
        all_running_s = time.monotonic() - t_submitted
        progress(f"all {len(ids)} jobs RUNNING with an engine {all_running_s:.1f} s after the first POST")
        doubled_before = sum(1 for procs in engines.values() if len(procs) > 1)
        pids = {job: procs[0].pid for job, procs in engines.items()}
        time.sleep(1.0)  # every engine past its start, writing ticks

        # How loaded kreed is in this steady state, for context.
        kreed_cpu_percent = kreed.psutil_process.cpu_percent(interval=2.0)
        api_ms = []
        for job_id in ids[:5]:
            t = time.perf_counter()
            client.call("GET", f"/v1/jobs/{job_id}/state")
            api_ms.append((time.perf_counter() - t) * 1000)
        client.close()
        t = time.perf_counter()
        proctree.job_processes(None, ids[0])
        scan_ms = (time.perf_counter() - t) * 1000
        progress(f"steady state: kreed at {kreed_cpu_percent:.0f}% CPU, GET /state "
                 f"{percentile(api_ms, 50):.0f} ms, one job's /proc scan {scan_ms:.0f} ms; kill -9 kreed")

        kreed.process.kill()  # kill -9
        kreed.process.wait()
        t_kill = time.time()
        t_kill_mono = time.monotonic()
        # Last seq of each job at the kill, read from the store now that
        # nobody writes it (the API under load would take minutes for this,
        # and its answer would be stale by the kill).
        before = last_seqs(kreed, wanted)
        time.sleep(max(0.0, args.down - (time.monotonic() - t_kill_mono)))
        alive = engines_by_job(wanted)
        died_while_down = sum(1 for job in ids
                              if not any(p.pid == pids[job] for p in alive[job]))

        t_restart, t0, api_up_s = restart(kreed, args.timeout)

        # Every job supervised again: a job.message with a seq above the one
        # noted before the kill, applied by the new daemon.
        observed: dict[str, float] = {}  # driver's view, seconds after the restart command
        applied: dict[str, float] = {}  # the daemon's time of that message, same origin
        lock = threading.Lock()
        shares = [ids[i::args.clients] for i in range(args.clients)]
        poll_deadline = time.monotonic() + args.timeout

        def poll(i: int) -> None:
            mine = list(shares[i])
            poller = kreed.client()
            try:
                while mine:
                    if time.monotonic() > poll_deadline:
                        raise RuntimeError(f"{len(mine)} jobs not supervised {args.timeout} s "
                                           f"after the restart, e.g. {mine[:3]}")
                    left = []
                    for job_id in mine:
                        reply = poller.call(
                            "GET", f"/v1/jobs/{job_id}/events?after={before[job_id]}&limit=500")
                        seen = time.monotonic() - t0
                        new = [e for e in reply["events"] if e["type"] == "job.message"
                               and parse_time(e["time"]) > t_kill]
                        if new:
                            with lock:
                                observed[job_id] = seen
                                applied[job_id] = parse_time(new[0]["time"]) - t_restart
                        else:
                            left.append(job_id)
                    mine = left
                    if mine:
                        time.sleep(0.05)
            finally:
                poller.close()

        harness.run_threads(args.clients, poll)
        supervised_s = max(observed.values())
        supervised_daemon_s = max(applied.values())
        progress(f"restarted: API up after {api_up_s:.2f} s, every job supervised after "
                 f"{supervised_s:.2f} s (daemon's time {supervised_daemon_s:.2f} s); checking")

        # Checks.
        client = kreed.client()
        running = {j["id"] for j in client.jobs_in_state("RUNNING")} & wanted
        lost = [job for job in ids if job not in running]
        lost_in_restart = 0
        for job_id in lost:
            state = client.call("GET", f"/v1/jobs/{job_id}/state")
            if state.get("state") == "FAILED" and state.get("error") == LOST:
                lost_in_restart += 1
        engines = engines_by_job(wanted)
        duplicated = sum(1 for procs in engines.values() if len(procs) > 1)
        replaced = sum(1 for job in ids if [p.pid for p in engines[job]] != [pids[job]])
        client.close()

        # Every job's full event log, with the query GET /v1/jobs/{id}/events
        # runs, once kreed has stopped (SIGTERM: the engines run on) so that
        # 200 logs of a few hundred events are not read through a loaded API.
        kreed.process.send_signal(signal.SIGTERM)
        kreed.process.wait(60)
        seq_bad = tick_bad = events_total = ticks_total = 0
        for job_id, events in event_logs(kreed, ids).items():
            bad_seqs, bad_ticks = check_log(events)
            seq_bad += bad_seqs
            tick_bad += bad_ticks
            events_total += len(events)
            ticks_total += sum(1 for e in events if e["type"] == "job.message")
    finally:
        kreed.stop()

    return {
        "jobs": len(ids),
        "all_running_s": all_running_s,
        "api_up_s": api_up_s,
        "supervised_s": supervised_s,
        "supervised_daemon_s": supervised_daemon_s,
        "supervised_daemon_p50_s": percentile(applied.values(), 50),
        "kreed_cpu_percent_before_kill": kreed_cpu_percent,
        "api_ms_before_kill": percentile(api_ms, 50),
        "proc_scan_ms": scan_ms,
        "jobs_lost": len(lost),
        "jobs_lost_in_restart": lost_in_restart,
        "events_missing": seq_bad + tick_bad,
        "event_seq_errors": seq_bad,
        "message_errors": tick_bad,
        "engines_duplicated": duplicated,
        "engines_duplicated_before": doubled_before,
        "engines_replaced": replaced,
        "engines_died_while_down": died_while_down,
        "events_checked": events_total,
        "messages_checked": ticks_total,
    }


def summary(m: dict) -> str:
    return (f"restart: kill -9 with {m['jobs']:.0f} running engines, down {ARGS.down:g} s; "
            f"API up {m['api_up_s']:.2f} s after the restart command; every job supervised again "
            f"after {m['supervised_s']:.2f} s (goal <= {GOAL:g} s; daemon's time "
            f"{m['supervised_daemon_s']:.2f} s, p50 {m['supervised_daemon_p50_s']:.2f} s); "
            f"jobs lost {m['jobs_lost']:.0f}, events missing or doubled {m['events_missing']:.0f} "
            f"(of {m['events_checked']:.0f} events, {m['messages_checked']:.0f} ticks), "
            f"engines duplicated {m['engines_duplicated']:.0f}, replaced {m['engines_replaced']:.0f}, "
            f"died while down {m['engines_died_while_down']:.0f} (goal: all 0). Before the kill: "
            f"kreed at {m['kreed_cpu_percent_before_kill']:.0f}% CPU, GET /state "
            f"{m['api_ms_before_kill']:.0f} ms, one job's /proc scan {m['proc_scan_ms']:.0f} ms")


ARGS = None


def main(argv=None) -> None:
    global ARGS
    signal.signal(signal.SIGTERM, _terminated)
    args = harness.arguments(__doc__.strip().splitlines()[0], add_arguments, argv)
    if args.quick:
        args.jobs = min(args.jobs, 10)
    ARGS = args
    harness.run_benchmark(
        "restart", args, lambda i: one_run(args),
        config={"jobs": args.jobs, "workflow": "sleep-loop.xml", "down_seconds": args.down,
                "parameters": {".sleeper.period": args.period,
                               ".sleeper.SDF Director.iterations": args.iterations},
                "supervisor": {"max_running": args.jobs, "monitor_interval_seconds": 2},
                "poll_clients": args.clients},
        summary=summary,
        goals={"supervised_s": f"<= {GOAL:g}", "jobs_lost": "== 0", "events_missing": "== 0",
               "engines_duplicated": "== 0"},
    )


if __name__ == "__main__":
    main()
