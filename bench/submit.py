"""
Submission throughput: sustained POST /v1/jobs (NEW jobs, not queued).

    /work/venv/bin/python bench/submit.py [--seconds 10] [--clients 4] [--runs 3] [--quick]

hello.xml is uploaded once; every job names its kree:workflow URI (creation
fetches it from the cache and checks it: the engine validation is cached per
version after the first job).  --clients threads, one keep-alive mTLS
connection each, submit back to back for --seconds; reported: jobs created
per second, p50/p99 latency of one POST, the daemon's CPU ms per job.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import Kreed, ms, percentile  # noqa: E402

GOAL = 1000.0  # jobs/s


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the load")
    parser.add_argument("--clients", type=int, default=4, help="client threads (one connection each)")


def one_run(args) -> dict:
    with Kreed(keep=args.keep, store_url=args.store_url) as kreed:
        setup = kreed.client()
        uri = setup.upload("hello.xml")
        # The first job pays for fetching and validating the workflow.
        first = setup.call("POST", "/v1/jobs", {"workflow": uri}, expect=(201,))
        assert first["state"] == "NEW", first
        setup.close()

        clients = [kreed.client() for _ in range(args.clients)]
        for client in clients:  # connect (TLS handshake) before the clock starts
            client.call("GET", "/v1/service-info")
        latencies: list[list[float]] = [[] for _ in clients]
        errors = [0] * len(clients)
        start_barrier = threading.Barrier(len(clients) + 1)
        body = {"workflow": uri}
        state = {"deadline": 0.0}

        def worker(i: int) -> None:
            client = clients[i]
            mine = latencies[i]
            start_barrier.wait()
            deadline = state["deadline"]
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    break
                status, _ = client.request("POST", "/v1/jobs", body)
                t1 = time.perf_counter()
                if status == 201:
                    mine.append(t1 - t0)
                else:
                    errors[i] += 1

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(clients))]
        for thread in threads:
            thread.start()
        cpu0 = kreed.cpu_seconds()
        state["deadline"] = time.perf_counter() + args.seconds
        t_start = time.perf_counter()
        start_barrier.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - t_start
        cpu = kreed.cpu_seconds() - cpu0
        for client in clients:
            client.close()

        all_latencies = [x for sub in latencies for x in sub]
        created = len(all_latencies)
        return {
            "jobs_per_second": created / elapsed,
            "jobs": created,
            "errors": sum(errors),
            "p50_ms": percentile(all_latencies, 50) * 1000 if created else None,
            "p99_ms": percentile(all_latencies, 99) * 1000 if created else None,
            "daemon_cpu_ms_per_job": cpu * 1000 / created if created else None,
            "daemon_cpu_utilisation": cpu / elapsed,
            "seconds": elapsed,
            "reconnects": sum(c.connects for c in clients) - len(clients),
        }


def summary(m: dict) -> str:
    return (f"submit: {m['jobs_per_second']:.0f} jobs/s created (goal >= {GOAL:.0f}), "
            f"p50 {ms(m['p50_ms'])}, p99 {ms(m['p99_ms'])}, "
            f"daemon CPU {m['daemon_cpu_ms_per_job']:.2f} ms/job, errors {m['errors']:.0f}")


def main(argv=None) -> None:
    args = harness.arguments(__doc__.strip().splitlines()[0], add_arguments, argv)
    if args.quick:
        args.seconds = min(args.seconds, 2.0)
        args.clients = min(args.clients, 2)
    harness.run_benchmark(
        "submit", args, lambda i: one_run(args),
        config={"seconds": args.seconds, "clients": args.clients, "workflow": "hello.xml",
                "queue": False},
        summary=summary,
        goals={"jobs_per_second": f">= {GOAL:.0f}"},
    )


if __name__ == "__main__":
    main()
