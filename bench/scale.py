"""
Scale: GET /v1/jobs/{id} and GET /v1/jobs pages with 1,000 versus 1,000,000 jobs stored.

    /work/venv/bin/python bench/scale.py [--small 1000] [--large 1000000] [--requests 500] [--runs 3] [--quick]

Two state directories (harness.Kreed: CA, certificates, database created and
migrated, frontend `bench` registered) are filled *before* their kreed
starts, not through the API: the jobs rows of the frontend are bulk-inserted
with the standard sqlite3 module (executemany, 100,000 rows per
transaction), as FINISHED jobs with time-sortable ids from
kree.ids.new_job_id (creation times 1 ms apart, so ids and insertion order
agree), timestamps in the store's format, job_dir "/nonexistent/<id>".  Only
the jobs table is filled (no events, parameters or inputs): the requests
measured read nothing else.  The schema's indexes exist already, so index
maintenance is part of the insert time, which is reported.

Each run then starts a fresh kreed on each store (both running at once) and
measures, interleaved (small, large, large, small, ...) so that whatever else
the machine is doing weighs on both alike, --requests of each:

- `get`: GET /v1/jobs/{id} of a random existing job;
- `list_newest`: GET /v1/jobs?limit=50 (the first page, newest first);
- `list_deep`: GET /v1/jobs?limit=50&after=<id of the job in the middle>.

Reported: p50/p99 of each on each store, their ratio large/small (the
figure: goal <= 1.5), the RSS of the kreed process (psutil) on the large
store after the requests (goal <= 200 MB), the insert time and the database
size.  The stores are built once; --runs restarts the daemons, not the
inserts.  --quick: 1,000 versus 20,000 jobs, 100 requests, one run.
"""

from __future__ import annotations

import datetime
import hashlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402

import harness  # noqa: E402
from harness import WORKFLOWS, Kreed, ms, percentile  # noqa: E402

from kree.ids import new_job_id  # noqa: E402

GOAL_RATIO = 1.5
GOAL_RSS_MB = 200.0
PAGE = 50
CHUNK = 100_000  # rows per transaction
STEP_US = 1000  # creation times 1 ms apart: one id prefix (milliseconds) per job
WARMUP = 20  # requests of each kind per store before the clock starts
KINDS = ("get", "list_newest", "list_deep")

INSERT = (
    "INSERT INTO jobs (id, frontend_id, end_user, workflow_uri, state, priority,"
    " created_at, queued_at, started_at, ended_at, running_seconds, progress,"
    " job_dir, resources, events_consumed, last_seq)"
    " VALUES (?, ?, NULL, ?, 'FINISHED', 0, ?, ?, ?, ?, 0, 1, ?, '{}', 0, 0)"
)


def add_arguments(parser) -> None:
    parser.add_argument("--small", type=int, default=1000, help="jobs in the small store")
    parser.add_argument("--large", type=int, default=1_000_000, help="jobs in the large store")
    parser.add_argument("--requests", type=int, default=500,
                        help="measured requests of each kind on each store, per run")
    parser.add_argument("--seed", type=int, default=9, help="seed of the random job choice")


# -- the stores -------------------------------------------------------------------


class _Stamp:
    """Microseconds since the epoch as the store writes UTC times in SQLite
    (kree.store.model.UTCDateTime over sa.DateTime: naive UTC
    'YYYY-MM-DD HH:MM:SS.ffffff'), caching the part up to the seconds."""

    def __init__(self) -> None:
        self.second = None
        self.prefix = ""

    def __call__(self, us: int) -> str:
        second, fraction = divmod(us, 1_000_000)
        if second != self.second:
            self.second = second
            self.prefix = datetime.datetime.fromtimestamp(
                second, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return f"{self.prefix}.{fraction:06d}"


def fill_store(kreed: Kreed, count: int, sample: int, rng: random.Random) -> dict:
    """
    Bulk-insert C{count} FINISHED jobs of the frontend C{bench} into the
    (not yet running) kreed's SQLite database.  Returns the insert time, the
    database size, the newest id, the id of the job in the middle and a
    random sample of ids.
    """
    path = sa.make_url(kreed.config.store_url).database
    uri = "kree:workflow/" + hashlib.sha256((WORKFLOWS / "hello.xml").read_bytes()).hexdigest()
    wanted = set(rng.sample(range(count), min(count, sample)))
    middle = count // 2
    ids: dict[int, str] = {}
    stamp = _Stamp()
    # The newest job was created a minute ago, the others 1 ms apart before it.
    base_us = int(time.time() * 1_000_000) - 60_000_000 - count * STEP_US

    def rows(start: int, stop: int, frontend_id: int):
        for i in range(start, stop):
            t = base_us + i * STEP_US
            job_id = new_job_id((t + STEP_US // 2) / 1_000_000)  # mid-millisecond: no rounding down
            if i in wanted or i == middle or i == count - 1:
                ids[i] = job_id
            created = stamp(t)
            yield (job_id, frontend_id, uri, created, created, stamp(t + 100), stamp(t + 900),
                   f"/nonexistent/{job_id}", )

    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        # A benchmark fixture, not how KREE writes: no fsync at all while
        # loading (a crash would leave a corrupt database, which is only
        # thrown away).  WAL as the daemon uses it.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        (frontend_id,) = db.execute("SELECT id FROM frontends WHERE name = 'bench'").fetchone()
        for start in range(0, count, CHUNK):
            db.execute("BEGIN")
            db.executemany(INSERT, rows(start, min(count, start + CHUNK), frontend_id))
            db.execute("COMMIT")
        # Back to the daemon's setting, and everything from the WAL into the
        # database file, so kreed starts on a database as it would have left it.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (stored,) = db.execute("SELECT count(*) FROM jobs").fetchone()
    finally:
        db.close()
    seconds = time.perf_counter() - started
    if stored != count:
        raise RuntimeError(f"{stored} jobs stored, {count} inserted")
    return {
        "count": count,
        "insert_seconds": seconds,
        "db_mb": Path(path).stat().st_size / 1e6,
        "newest": ids[count - 1],
        "middle": ids[middle],
        "sample": [ids[i] for i in sorted(wanted)],
    }


# -- the daemons ----------------------------------------------------------------


def start(kreed: Kreed) -> None:
    kreed.port = None  # read again from this start's log
    kreed.start(timeout=120)


def halt(kreed: Kreed) -> None:
    """Stop kreed but keep its state directory (for the next run)."""
    if kreed.process is not None and kreed.process.poll() is None:
        kreed.process.send_signal(signal.SIGTERM)
        try:
            kreed.process.wait(30)
        except subprocess.TimeoutExpired:
            kreed.process.kill()
            kreed.process.wait()
    if getattr(kreed, "_stderr", None) is not None:
        kreed._stderr.close()
        kreed._stderr = None


def check(client, store: dict) -> None:
    """The daemon sees the store as inserted (newest first, the cursor works)."""
    first = client.call("GET", f"/v1/jobs?limit={PAGE}")
    assert first["jobs"][0]["id"] == store["newest"], first["jobs"][0]
    assert len(first["jobs"]) == PAGE and first["next"], first["next"]
    deep = client.call("GET", f"/v1/jobs?limit={PAGE}&after={store['middle']}")
    assert len(deep["jobs"]) == PAGE and all(j["id"] < store["middle"] for j in deep["jobs"])
    job = client.call("GET", f"/v1/jobs/{store['sample'][0]}")
    assert job["state"] == "FINISHED", job


# -- one run ----------------------------------------------------------------------


def one_run(args, kreeds: dict[str, Kreed], stores: dict[str, dict], rng: random.Random) -> dict:
    sizes = list(kreeds)
    clients = {}
    try:
        for size in sizes:
            start(kreeds[size])
            clients[size] = kreeds[size].client()
            check(clients[size], stores[size])

        def path(size: str, kind: str) -> str:
            if kind == "get":
                return f"/v1/jobs/{rng.choice(stores[size]['sample'])}"
            if kind == "list_newest":
                return f"/v1/jobs?limit={PAGE}"
            return f"/v1/jobs?limit={PAGE}&after={stores[size]['middle']}"

        latencies = {(size, kind): [] for size in sizes for kind in KINDS}
        for i in range(WARMUP + args.requests):
            for kind in KINDS:
                # Alternate which store goes first.
                for size in (sizes if i % 2 == 0 else sizes[::-1]):
                    target = path(size, kind)
                    t0 = time.perf_counter()
                    status, body = clients[size].request("GET", target)
                    elapsed = time.perf_counter() - t0
                    if status != 200:
                        raise harness.ApiError("GET", target, status, body)
                    if i >= WARMUP:
                        latencies[size, kind].append(elapsed * 1000)

        result: dict = {}
        for kind in KINDS:
            for p in (50, 99):
                small = percentile(latencies["small", kind], p)
                large = percentile(latencies["large", kind], p)
                result[f"{kind}_small_p{p}_ms"] = small
                result[f"{kind}_large_p{p}_ms"] = large
                result[f"{kind}_ratio_p{p}"] = large / small
        for size in sizes:
            result[f"rss_{size}_mb"] = kreeds[size].psutil_process.memory_info().rss / 1e6
        result["reconnects"] = sum(c.connects for c in clients.values()) - len(clients)
        for size in sizes:
            result[f"{size}_insert_seconds"] = stores[size]["insert_seconds"]
            result[f"{size}_db_mb"] = stores[size]["db_mb"]
        return result
    finally:
        for client in clients.values():
            client.close()
        for size in sizes:
            halt(kreeds[size])


def summary(m: dict) -> str:
    def mark(ok: bool) -> str:
        return "✓" if ok else "✗"

    lines = [f"scale: {int(m['small_jobs']):,} vs {int(m['large_jobs']):,} jobs "
             f"(insert of the large store {m['large_insert_seconds']:.1f} s, "
             f"{m['large_jobs'] / m['large_insert_seconds']:,.0f} rows/s, "
             f"database {m['large_db_mb']:.0f} MB)"]
    for kind, label in (("get", "GET /v1/jobs/{id}"), ("list_newest", "GET /v1/jobs first page"),
                        ("list_deep", "GET /v1/jobs middle page")):
        r50, r99 = m[f"{kind}_ratio_p50"], m[f"{kind}_ratio_p99"]
        lines.append(
            f"  {label:26} p50 {ms(m[f'{kind}_small_p50_ms'])} -> {ms(m[f'{kind}_large_p50_ms'])}"
            f" (x{r50:.2f} {mark(r50 <= GOAL_RATIO)}), "
            f"p99 {ms(m[f'{kind}_small_p99_ms'])} -> {ms(m[f'{kind}_large_p99_ms'])}"
            f" (x{r99:.2f} {mark(r99 <= GOAL_RATIO)})")
    lines.append(f"  kreed RSS with the large store {m['rss_large_mb']:.0f} MB "
                 f"{mark(m['rss_large_mb'] <= GOAL_RSS_MB)} (small store {m['rss_small_mb']:.0f} MB); "
                 f"goals: ratio <= {GOAL_RATIO}, RSS <= {GOAL_RSS_MB:.0f} MB")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = harness.arguments(__doc__.strip().splitlines()[0], add_arguments, argv)
    if args.store_url:
        raise SystemExit("scale.py bulk-loads its stores into SQLite files: --store-url "
                         "(PostgreSQL) is not supported here yet")
    if args.quick:
        args.small = min(args.small, 1000)
        args.large = min(args.large, 20_000)
        args.requests = min(args.requests, 100)
    rng = random.Random(args.seed)
    kreeds: dict[str, Kreed] = {}
    stores: dict[str, dict] = {}
    setup_started = time.perf_counter()
    try:
        for size, count in (("small", args.small), ("large", args.large)):
            kreeds[size] = Kreed(keep=args.keep)
            stores[size] = fill_store(kreeds[size], count, max(args.requests, 1000), rng)
            print(f"{size} store: {count:,} jobs inserted in {stores[size]['insert_seconds']:.1f} s "
                  f"({stores[size]['db_mb']:.0f} MB)", file=sys.stderr, flush=True)
        setup_seconds = time.perf_counter() - setup_started  # both state dirs and stores

        def run(_index: int) -> dict:
            result = one_run(args, kreeds, stores, rng)
            result["small_jobs"] = args.small
            result["large_jobs"] = args.large
            result["setup_seconds"] = setup_seconds  # not in wall_seconds, which counts the runs
            return result

        harness.run_benchmark(
            "scale", args, run,
            config={"small": args.small, "large": args.large, "requests": args.requests,
                    "page": PAGE, "warmup": WARMUP, "insert_chunk": CHUNK,
                    "kinds": {"get": "GET /v1/jobs/{random id}",
                              "list_newest": f"GET /v1/jobs?limit={PAGE}",
                              "list_deep": f"GET /v1/jobs?limit={PAGE}&after=<middle id>"}},
            summary=summary,
            goals={"ratio_p50": f"<= {GOAL_RATIO}", "ratio_p99": f"<= {GOAL_RATIO}",
                   "rss_large_mb": f"<= {GOAL_RSS_MB:.0f}"},
        )
    finally:
        for kreed in kreeds.values():
            kreed.stop()


if __name__ == "__main__":
    main()
