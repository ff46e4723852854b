"""
Event delivery latency to a callback listener under a steady job load.

    /work/venv/bin/python bench/events.py [--rate 5] [--seconds 10] [--runs 3] [--quick]

A kree.listener.Listener (in this driver process, on 127.0.0.1, hence
[fetch] allow_private_addresses = true) is subscribed to every event of the
frontend.  Then one keep-alive connection creates and queues --rate jobs of
hello.xml per second for --seconds, and the driver waits until the listener
has the terminal job.state event of every job.

Latency of an event = the listener's receive time (time.time() when the
verified delivery arrives) minus the event's "time" field (set by the daemon
when it committed the event; same machine, same clock).  Reported p50/p99
over every event, and over job.state events alone.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import Kreed, ms, parse_time, percentile  # noqa: E402

from kree.listener import Listener  # noqa: E402

GOAL = 50.0  # ms, p99
TERMINAL = {"FINISHED", "FAILED", "ABORTED"}


def add_arguments(parser) -> None:
    parser.add_argument("--rate", type=float, default=5.0, help="jobs created and queued per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the load")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the last events after the load")


def one_run(args) -> dict:
    config = "[fetch]\nallow_private_addresses = true\n"
    secret = secrets.token_urlsafe(24)
    received: list[tuple[float, dict]] = []
    lock = threading.Lock()

    def on_event(event: dict) -> None:
        now = time.time()
        with lock:
            received.append((now, event))

    with Kreed(config_text=config, keep=args.keep, store_url=args.store_url) as kreed, \
            Listener(secret, on_event=on_event) as listener:
        client = kreed.client()
        uri = client.upload("hello.xml")
        # Warm the per-version workflow check before subscribing.
        client.call("POST", "/v1/jobs", {"workflow": uri}, expect=(201,))
        client.call("POST", "/v1/subscriptions", {"url": listener.url, "secret": secret},
                    expect=(201,))

        count = max(1, int(round(args.rate * args.seconds)))
        ids: list[str] = []
        t0 = time.perf_counter()
        for i in range(count):
            delay = t0 + i / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            job = client.call("POST", "/v1/jobs", {"workflow": uri, "queue": True}, expect=(201,))
            ids.append(job["id"])
            kreed.job_ids.add(job["id"])

        wanted = set(ids)

        def all_ended(events: list[dict]) -> bool:
            ended = {e["job"] for e in events
                     if e["type"] == "job.state" and e["data"].get("to") in TERMINAL}
            return wanted <= ended

        listener.wait_for(all_ended, timeout=args.timeout)
        client.close()
        with lock:
            ours = [(t, e) for t, e in received if e.get("job") in wanted]
        latencies = [t - parse_time(e["time"]) for t, e in ours]
        state_latencies = [t - parse_time(e["time"]) for t, e in ours if e["type"] == "job.state"]
        duplicates, rejected = listener.duplicates, listener.rejected
        times = [t for t, _ in ours]
        span = max(times) - min(times) if times else 0.0

    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "state_p50_ms": percentile(state_latencies, 50) * 1000,
        "state_p99_ms": percentile(state_latencies, 99) * 1000,
        "events": len(latencies),
        "events_per_second": len(latencies) / max(span, 1e-9),
        "jobs": count,
        "duplicates": duplicates,
        "rejected": rejected,
    }


def summary(m: dict) -> str:
    return (f"events: {m['events']:.0f} deliveries, latency p50 {ms(m['p50_ms'])}, "
            f"p99 {ms(m['p99_ms'])} (goal <= {GOAL:.0f} ms), max {ms(m['max_ms'])}; "
            f"job.state only p50 {ms(m['state_p50_ms'])} p99 {ms(m['state_p99_ms'])}")


def main(argv=None) -> None:
    args = harness.arguments(__doc__.strip().splitlines()[0], add_arguments, argv)
    if args.quick:
        args.seconds = min(args.seconds, 2.0)
    harness.run_benchmark(
        "events", args, lambda i: one_run(args),
        config={"rate": args.rate, "seconds": args.seconds, "workflow": "hello.xml",
                "listener": "kree.listener.Listener, http, 127.0.0.1"},
        summary=summary,
        goals={"p99_ms": f"<= {GOAL:.0f}"},
    )


if __name__ == "__main__":
    main()
