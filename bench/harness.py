"""
Shared pieces of the benchmarks: a real kreed in a temporary directory, a
keep-alive mTLS client, percentiles, medians over runs and the result line.

The benchmark driver (the process running a bench/*.py script) is separate
from the daemon: kreed is started here as a subprocess with its own state
directory, CA, server certificate and a registered frontend, exactly as an
operator would run it, and is driven only through its HTTPS API.  Standard
library plus psutil and KREE's own credential and store helpers (to set up
the state directory before the daemon starts); no pytest.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from kree import credentials  # noqa: E402
from kree.config import load_config  # noqa: E402
from kree.store import migrate  # noqa: E402
from kree.store.engine import create_engine  # noqa: E402
from kree.store.frontends import FrontendsStore  # noqa: E402
from kree.store.pool import DBPool  # noqa: E402

WORKFLOWS = REPO / "workflows"
PYTHON = sys.executable
JOB_ENV = "KREE_JOB_ID"


# -- the daemon -----------------------------------------------------------------


class Kreed:
    """
    A kreed subprocess with a temporary state directory of its own.

        with Kreed(config_text="[supervisor]\\nmax_running = 2\\n") as kreed:
            client = kreed.client()
            ...
    """

    def __init__(self, *, config_text: str = "", frontends: Iterable[str] = ("bench",),
                 keep: bool = False, store_url: str | None = None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="kree-bench-"))
        self.keep = keep
        self.state_dir = self.base / "state"
        self.config_path = self.base / "kree.toml"
        # PostgreSQL: a fresh schema for this daemon, dropped by stop().
        self.schema = PostgresSchema(store_url) if store_url else None
        store = f'\n[store]\nurl = "{self.schema.url}"\n' if self.schema else ""
        self.config_path.write_text(f'state_dir = "state"\n{config_text}{store}')
        self.config = load_config(self.config_path)
        credentials.init_ca(self.config)
        credentials.issue_server(self.config, ["localhost", "127.0.0.1"])
        pool = DBPool(create_engine(self.config.store_url), reactor=None)
        try:
            pool.run_in_thread(migrate.upgrade)
            store = FrontendsStore(pool)
            for name in frontends:
                issued = credentials.issue_frontend(self.config, name)
                pool.run_in_thread(store.add_thd, name, issued.fingerprint, issued.subject)
        finally:
            pool.stop()
        self.ca_path = self.config.tls_path("ca")
        self.process: subprocess.Popen | None = None
        self.psutil_process: psutil.Process | None = None
        self.port: int | None = None
        self.job_ids: set[str] = set()  # every job the benchmark created, for clean-up

    # life cycle

    def start(self, timeout: float = 60) -> "Kreed":
        self.stderr_path = self.base / "kreed.err"
        self._stderr = open(self.stderr_path, "w")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        self.process = subprocess.Popen(
            [PYTHON, "-c", "from kree.daemon import main; main()",
             "--config", str(self.config_path), "--listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=self._stderr, stdin=subprocess.DEVNULL,
            cwd=self.base, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr_path.read_text()
            for line in text.splitlines():
                if line.startswith("{"):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if "frontend API listening" in record.get("message", ""):
                        self.port = record["port"]
            if self.port and "running (pid" in text:
                self.psutil_process = psutil.Process(self.process.pid)
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"kreed exited {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"kreed did not start within {timeout} s:\n{self.stderr_path.read_text()}")

    def stop(self) -> None:
        """Kill the engines of our jobs, stop kreed, remove the directory."""
        try:
            self.kill_engines()
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            # Engines started in the last instant before the stop.
            self.kill_engines()
        finally:
            if getattr(self, "_stderr", None) is not None:
                self._stderr.close()
                self._stderr = None
            if not self.keep:
                shutil.rmtree(self.base, ignore_errors=True)
                if self.schema is not None:
                    self.schema.drop()
            else:
                print(f"kept {self.base}" + (f" and schema {self.schema.name}" if self.schema else ""),
                      file=sys.stderr)

    def __enter__(self) -> "Kreed":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # measurements

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the kreed process itself (not its engines)."""
        times = self.psutil_process.cpu_times()
        return times.user + times.system

    # clients and clean-up

    def client(self, name: str = "bench", timeout: float = 60) -> "KeepAliveClient":
        cert, key = credentials.frontend_paths(self.config, name)
        return KeepAliveClient(self.port, self.ca_path, cert, key, timeout=timeout)

    def engine_processes(self) -> list[psutil.Process]:
        """Every live process of this user marked with one of our jobs, or under our state dir."""
        found = []
        jobs_dir = str(self.state_dir)
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
            if proc.pid == me or (self.process is not None and proc.pid == self.process.pid):
                continue
            try:
                if proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
                    continue
                job = proc.environ().get(JOB_ENV)
                if job is None:
                    continue
                cmdline = proc.info["cmdline"] or []
                if job in self.job_ids or any(jobs_dir in arg for arg in cmdline):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def kill_engines(self) -> int:
        procs = self.engine_processes()
        for proc in procs:
            try:
                proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        psutil.wait_procs(procs, timeout=5)
        return len(procs)


class PostgresSchema:
    """
    A new, empty schema on a PostgreSQL server for one daemon: its URL sets
    the search path (options=-csearch_path=<schema>, as tests/conftest.py
    does), so the daemon's tables and migrations live there alone.
    """

    def __init__(self, base_url: str) -> None:
        import secrets

        import sqlalchemy as sa

        self.name = f"kree_bench_{secrets.token_hex(6)}"
        self._base_url = base_url
        engine = sa.create_engine(base_url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{self.name}"'))
        finally:
            engine.dispose()
        url = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={self.name}"})
        self.url = url.render_as_string(hide_password=False)

    def drop(self) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(self._base_url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        finally:
            engine.dispose()


# -- the client -------------------------------------------------------------------


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path}: {status} {body[:500]!r}")
        self.status = status
        self.body = body


class KeepAliveClient:
    """
    One HTTPS connection with the frontend's certificate, kept open and reused
    for every request (one per thread: http.client is not thread-safe).
    """

    def __init__(self, port: int, ca: Path, cert: Path, key: Path, timeout: float = 60) -> None:
        self.port = port
        self.timeout = timeout
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        self.context = context
        self.connection: http.client.HTTPSConnection | None = None
        self.connects = 0

    def _connect(self) -> http.client.HTTPSConnection:
        if self.connection is None:
            self.connection = http.client.HTTPSConnection(
                "localhost", self.port, context=self.context, timeout=self.timeout)
            self.connection.connect()
            self.connects += 1
        return self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def request(self, method: str, path: str, json_body: Any = None, *, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest):
                # The server closed an idle keep-alive connection: reconnect once.
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, data
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, json_body: Any = None, *, expect=(200, 201, 202, 204),
             **kw) -> Any:
        """A request that must succeed; its JSON body (or None)."""
        status, data = self.request(method, path, json_body, **kw)
        if status not in expect:
            raise ApiError(method, path, status, data)
        return json.loads(data) if data else None

    def upload(self, workflow: str) -> str:
        """Upload a bundled workflow; its kree:workflow/<sha256> URI."""
        data = (WORKFLOWS / workflow).read_bytes()
        return self.call("POST", "/v1/workflows", body=data,
                         headers={"Content-Type": "application/xml"})["uri"]

    def jobs_in_state(self, state: str, page: int = 500) -> list[dict]:
        jobs, after = [], None
        while True:
            path = f"/v1/jobs?state={state}&limit={page}" + (f"&after={after}" if after else "")
            reply = self.call("GET", path)
            jobs.extend(reply["jobs"])
            after = reply.get("next")
            if not after:
                return jobs

    def events(self, job_id: str) -> list[dict]:
        events, after = [], 0
        while True:
            reply = self.call("GET", f"/v1/jobs/{job_id}/events?after={after}&limit=500")
            events.extend(reply["events"])
            if not reply["events"]:
                return events
            after = reply["next"]


# -- numbers ----------------------------------------------------------------------


def wait_until_running(client: "KeepAliveClient", wanted: set[str], find: Callable[[set[str]], dict],
                       deadline: float, poll: float = 0.1) -> None:
    """
    Wait until every job in C{wanted} is RUNNING and C{find(wanted)} (job id
    -> processes) shows processes for each.  RUNNING is written as the engine
    is spawned: until it has exec'ed, its environment does not show the mark.
    """
    while True:
        running = {j["id"] for j in client.jobs_in_state("RUNNING")} & wanted
        if running == wanted:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(running)} of {len(wanted)} jobs RUNNING")
        time.sleep(poll)
    while True:
        missing = [job for job, found in find(wanted).items() if not found]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no process found for {len(missing)} RUNNING jobs, "
                               f"e.g. {missing[:3]}")
        time.sleep(poll)


def percentile(values: Iterable[float], p: float) -> float | None:
    """The p-th percentile (0..100), linear between closest ranks; None if empty."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def parse_time(text: str) -> float:
    """An ISO 8601 time from the daemon as a POSIX timestamp."""
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def rounded(value: Any, digits: int = 3) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    return value


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key: the median of the runs' numbers (keys missing in a run are skipped)."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    result: dict[str, Any] = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(values):
            result[key] = rounded(float(statistics.median(numbers)))
        else:
            result[key] = values[0] if values else None
    return result


# -- command line and output ----------------------------------------------------


def arguments(description: str, add: Callable[[argparse.ArgumentParser], None] | None = None,
              argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=3, help="runs (fresh daemon each); medians are reported")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and one run: a smoke test, not a figure")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument("--store-url", default=None, metavar="URL",
                        help="a PostgreSQL server, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test: "
                             "each daemon gets a fresh schema there (default: the embedded SQLite)")
    if add is not None:
        add(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    return args


def run_benchmark(name: str, args: argparse.Namespace, one_run: Callable[[int], dict[str, Any]],
                  config: dict[str, Any], summary: Callable[[dict[str, Any]], str],
                  goals: dict[str, str] | None = None) -> dict[str, Any]:
    """Run C{one_run} C{args.runs} times, print the summary and the RESULT line."""
    runs = []
    started = time.monotonic()
    for index in range(args.runs):
        result = one_run(index)
        runs.append(result)
        print(f"run {index + 1}/{args.runs}: " + json.dumps({k: rounded(v) for k, v in result.items()}),
              file=sys.stderr, flush=True)
    medians = median_of_runs(runs)
    record = {
        "benchmark": name,
        "quick": bool(args.quick),
        "runs": args.runs,
        "config": config,
        "median": medians,
        "per_run": [{k: rounded(v) for k, v in run.items()} for run in runs],
        "goals": goals or {},
        "store": "postgresql" if getattr(args, "store_url", None) else "sqlite",
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "wall_seconds": round(time.monotonic() - started, 1),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(summary(medians))
    print("RESULT " + json.dumps(record, sort_keys=True), flush=True)
    return record


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run C{target(i)} in C{count} threads and re-raise the first failure."""
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
