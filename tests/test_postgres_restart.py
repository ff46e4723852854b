"""
The PostgreSQL server restarted and stopped under a live kreed (issue 9,
fault tests).

A real kreed on the real server runs a steady stream of small jobs, submitted
through the API, while the server is restarted twice: in fast mode (every
session is terminated) and in immediate mode (the server crashes and
recovers).  Submitting goes on during the outages and after them.  What must
hold:

 - every request is answered in bounded time: a success, or a clean 503 JSON
   error (database_unavailable), never a 500, a hang or a dropped connection;
 - after the restart the daemon serves again without being restarted (the
   same pid);
 - every job that was accepted (201) reaches FINISHED, with its message and
   an event log whose seqs have no gaps; no job is stuck half-way;
 - the callback outbox carries on: a listener gets every event of every job.

A server that stays down longer than [store] reconnect_seconds gets 503s,
with Retry-After, and service resumes when it is back.

These tests stop the local cluster that the test URL points at (with
pg_ctlcluster, so they need root or the cluster's owner) and always start it
again; they are skipped for any other server.
"""

import getpass
import json
import os
import subprocess
import threading
import time

import pytest
import sqlalchemy as sa

from kree.listener import Listener
from live import REPO_WORKFLOWS, LiveKree
from waiting import wait_for

pytestmark = pytest.mark.postgresql

SECRET = "p" * 32
CONFIG = """
[store]
url = {url}
reconnect_seconds = {reconnect_seconds}
[fetch]
allow_private_addresses = true
[events]
retry_schedule_seconds = [0.2, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
timeout_seconds = 2
[supervisor]
max_running = 4
stop_grace_seconds = 2
monitor_interval_seconds = 0.2
"""
SUBMITTERS = 2
# Each submitter's pause between jobs: about what four engine slots on a small
# machine get through, so the stream flows rather than piling up.
SUBMIT_PAUSE_SECONDS = 0.3
# Jobs the traffic gets accepted before each restart and after the last.
ACCEPTED_BETWEEN = 5
RESTARTS = ("fast", "immediate")
# No answer may take longer than this (the client gives up at 30 s).
MAX_ANSWER_SECONDS = 20.0
TERMINAL = ("FINISHED", "FAILED", "ABORTED")


class Cluster:
    """The local PostgreSQL cluster serving a URL, driven with pg_ctlcluster."""

    def __init__(self, version: str, name: str, port: int) -> None:
        self.version, self.name, self.port = version, name, port

    @classmethod
    def serving(cls, url: str) -> "Cluster":
        """The cluster, or a skip saying why there is none to restart."""
        parsed = sa.make_url(url)
        if parsed.host not in (None, "127.0.0.1", "localhost", "::1"):
            pytest.skip(f"the test server {parsed.host} is not a local cluster")
        try:
            listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                                     timeout=30, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            pytest.skip(f"no local PostgreSQL clusters to restart ({e})")
        for line in listing.splitlines():
            version, name, port, _status, owner, *_ = line.split()
            if int(port) == (parsed.port or 5432):
                if os.geteuid() != 0 and getpass.getuser() != owner:
                    pytest.skip(f"cluster {version}/{name} belongs to {owner}: cannot restart it")
                return cls(version, name, int(port))
        pytest.skip(f"no local cluster listens on port {parsed.port or 5432}")

    def ctl(self, action: str, mode: str = "fast") -> None:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "-m", mode,
                        self.version, self.name, action],
                       check=True, capture_output=True, timeout=60)

    def ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                                   timeout=10)
            if probe.returncode == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


@pytest.fixture
def cluster(postgres_url):
    """The server the test may stop: whatever happens, it runs again after."""
    cluster = Cluster.serving(postgres_url)
    yield cluster
    if not cluster.ready(timeout=2):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", cluster.version,
                        cluster.name, "start"], capture_output=True, timeout=60)
    assert cluster.ready(), "PostgreSQL did not come back after the test"


def live_kree(tmp_path, postgres_url, reconnect_seconds: float) -> LiveKree:
    config = CONFIG.format(url=json.dumps(postgres_url), reconnect_seconds=reconnect_seconds)
    return LiveKree(tmp_path, frontends=("portal",), config_text=config).start()


class Traffic:
    """Threads submitting jobs and reading their state, recording every answer."""

    def __init__(self, client, workflow_uri: str) -> None:
        self.client = client
        self.workflow_uri = workflow_uri
        self.answers: list[dict] = []  # {kind, start, seconds, status, error}
        self.accepted: list[str] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._submit, daemon=True)
                         for _ in range(SUBMITTERS)]
        self._threads.append(threading.Thread(target=self._read, daemon=True))

    def start(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(MAX_ANSWER_SECONDS + 15)
            assert not thread.is_alive(), "a request never came back"

    def _call(self, kind: str, method: str, path: str, body=None):
        start = time.monotonic()
        answer = {"kind": kind, "start": start, "status": None, "error": None}
        try:
            reply = self.client.request(method, path, json_body=body)
            answer["status"] = reply.status
            if reply.status >= 400:
                answer["error"] = reply.error
        except Exception as e:  # a dropped connection, a timeout, a schema mismatch
            answer["error"] = f"{type(e).__name__}: {e}"
            reply = None
        answer["seconds"] = time.monotonic() - start
        with self._lock:
            self.answers.append(answer)
        return reply

    def _submit(self) -> None:
        while not self.stopping.is_set():
            reply = self._call("submit", "POST", "/v1/jobs",
                               {"workflow": self.workflow_uri, "queue": True})
            if reply is not None and reply.status == 201:
                with self._lock:
                    self.accepted.append(reply.json["id"])
            time.sleep(SUBMIT_PAUSE_SECONDS)

    def _read(self) -> None:
        while not self.stopping.is_set():
            with self._lock:
                job_id = self.accepted[-1] if self.accepted else None
            if job_id is not None:
                self._call("state", "GET", f"/v1/jobs/{job_id}/state")
                self._call("events", "GET", f"/v1/jobs/{job_id}/events")
            time.sleep(0.05)

    def during(self, start: float, end: float) -> list[dict]:
        """Answers to the requests that were in flight between start and end."""
        return [a for a in self.answers if a["start"] < end and a["start"] + a["seconds"] > start]


def all_jobs(client) -> list[dict]:
    jobs, after = [], None
    while True:
        reply = client.get("/v1/jobs?limit=500" + (f"&after={after}" if after else ""))
        assert reply.status == 200, reply.body
        page = reply.json
        jobs += page["jobs"]
        after = page.get("next")
        if not after:
            return jobs


def wait_until_settled(client, job_ids, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = {job["id"]: job["state"] for job in all_jobs(client)}
        if all(states.get(job_id) in TERMINAL for job_id in job_ids):
            return states
        if time.monotonic() > deadline:
            unsettled = {j: states.get(j) for j in job_ids if states.get(j) not in TERMINAL}
            raise AssertionError(f"{len(unsettled)} accepted jobs never ended: {unsettled}")
        time.sleep(0.2)


def test_postgres_restart_under_load(tmp_path, postgres_url, cluster):
    server = live_kree(tmp_path, postgres_url, reconnect_seconds=10)
    listener = Listener(SECRET).start()
    traffic = None
    try:
        pid = server.process.pid
        client = server.client("portal")
        reply = client.post("/v1/subscriptions", {"url": listener.url, "secret": SECRET})
        assert reply.status == 201, reply.body
        uploaded = client.post("/v1/workflows", body=(REPO_WORKFLOWS / "hello.xml").read_bytes(),
                               headers={"Content-Type": "application/xml"})
        traffic = Traffic(client, uploaded.json["uri"]).start()

        outages = []
        for mode in RESTARTS + (None,):
            # Before each restart, and after the last, the service takes jobs again.
            seen = len(traffic.accepted)
            wait_for(lambda: len(traffic.accepted) >= seen + ACCEPTED_BETWEEN,
                     f"{ACCEPTED_BETWEEN} more jobs accepted", timeout=120, interval=0.1)
            if mode is None:
                break
            accepted_before = len(traffic.accepted)
            started = time.monotonic()
            cluster.ctl("restart", mode)
            outages.append((started, time.monotonic(), accepted_before))
        traffic.stop()

        # The daemon lived through it and serves again.
        assert server.process.poll() is None, server.log
        assert int((server.state_dir / "kreed.pid").read_text()) == pid == server.process.pid
        assert client.get("/v1/service-info").status == 200

        # Every answer was a success or a clean 503, and none took long.
        answers = traffic.answers
        bad = [a for a in answers if a["status"] not in (200, 201, 503)
               or (a["status"] == 503 and a["error"] != "database_unavailable")]
        assert not bad, bad[:10]
        slowest = max(a["seconds"] for a in answers)
        assert slowest < MAX_ANSWER_SECONDS, slowest
        assert "internal error" not in server.log
        # It noticed (sessions were ended under it) and rode the outages out.
        assert "database unreachable" in server.log and "reachable again" in server.log

        # Each restart happened under load; jobs were accepted between them and after.
        previous = 0
        for started, ended, accepted_before in outages:
            assert accepted_before >= previous + 3, (outages, answers)
            assert traffic.during(started, ended), "no request met the outage"
            previous = accepted_before
        assert len(traffic.accepted) >= previous + 3, "no job was accepted after the restarts"

        # No accepted job is lost or stuck: each one FINISHED, in order, once.
        accepted = list(traffic.accepted)
        states = wait_until_settled(client, accepted, timeout=30)
        assert {states[j] for j in accepted} == {"FINISHED"}, {
            j: states[j] for j in accepted if states[j] != "FINISHED"}
        # Jobs whose creation answered 503 may exist (created, then the queueing
        # failed): they are NEW, or were queued and ran; none is half-way.
        assert set(states.values()) <= {"FINISHED", "NEW"}, states
        logs = {}
        for job_id in accepted:
            events = client.get(f"/v1/jobs/{job_id}/events?limit=500").json["events"]
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(1, len(seqs) + 1)), (job_id, seqs)
            path = [e["data"]["to"] for e in events if e["type"] == "job.state"]
            assert path == ["QUEUED", "RUNNING", "FINISHED"], (job_id, events)
            messages = [e["data"]["text"] for e in events if e["type"] == "job.message"]
            assert messages == ["Hello, world"], (job_id, events)
            logs[job_id] = events

        # The outbox drained: the listener has every event of every accepted job.
        def delivered_all(events):
            ids = {e["id"] for e in events}
            return all(e["id"] in ids for log in logs.values() for e in log)

        listener.wait_for(delivered_all, timeout=30)
        assert listener.rejected == 0
    finally:
        if traffic is not None:
            traffic.stopping.set()
        listener.stop()
        server.stop()


def test_postgres_down_longer_than_kreed_waits(tmp_path, postgres_url, cluster):
    server = live_kree(tmp_path, postgres_url, reconnect_seconds=1)
    try:
        pid = server.process.pid
        client = server.client("portal")
        assert client.get("/v1/jobs").status == 200
        cluster.ctl("stop")

        for method, path, body in (("GET", "/v1/jobs", None),
                                   ("POST", "/v1/jobs", {"workflow": "kree:workflow/" + "0" * 64})):
            started = time.monotonic()
            reply = client.request(method, path, json_body=body)
            seconds = time.monotonic() - started
            assert reply.status == 503, reply.body
            assert reply.error == "database_unavailable", reply.body
            assert reply.headers["retry-after"] == "5"
            assert 0.9 < seconds < 8, seconds  # it waited for the server, then said so

        cluster.ctl("start")
        assert cluster.ready()
        assert client.get("/v1/jobs").status == 200
        assert server.process.poll() is None and server.process.pid == pid
        assert "internal error" not in server.log
    finally:
        server.stop()


def test_engines_outlive_an_outage_longer_than_kreed_waits(tmp_path, postgres_url, cluster):
    """
    Jobs that run, and jobs queued behind them, while the server stays away
    for longer than [store] reconnect_seconds: the engines' events wait for
    the database instead of being dropped, dispatch resumes by itself, and
    every job still ends FINISHED with every message, once.
    """
    server = live_kree(tmp_path, postgres_url, reconnect_seconds=1)
    try:
        client = server.client("portal")
        data = (REPO_WORKFLOWS / "sleep-loop.xml").read_bytes()
        uri = client.post("/v1/workflows", body=data,
                          headers={"Content-Type": "application/xml"}).json["uri"]
        jobs = []
        for _ in range(6):  # four run (max_running), two wait in the queue
            reply = client.post("/v1/jobs", {"workflow": uri, "queue": True, "parameters": {
                ".sleeper.period": 100, ".sleeper.SDF Director.iterations": 30}})
            assert reply.status == 201, reply.body
            jobs.append(reply.json["id"])
        wait_for(lambda: sum(client.get(f"/v1/jobs/{j}/state").json["state"] == "RUNNING"
                             for j in jobs) >= 4, "four jobs RUNNING", interval=0.1)
        written = server.state_dir / "jobs"

        def lines_written() -> int:
            files = (written / job_id / "events.jsonl" for job_id in jobs)
            return sum(f.read_bytes().count(b"\n") for f in files if f.exists())

        cluster.ctl("stop")
        before = lines_written()
        # kreed gives up waiting (after 1 s) and says it will try again, while
        # the engines go on writing.
        wait_for(lambda: "the database is unavailable; trying again" in server.log,
                 "kreed noticing the outage", interval=0.1)
        wait_for(lambda: lines_written() >= before + 4, "the engines writing meanwhile",
                 interval=0.1)
        cluster.ctl("start")
        assert cluster.ready()
        states = wait_until_settled(client, jobs, timeout=60)
        assert {states[j] for j in jobs} == {"FINISHED"}, states
        for job_id in jobs:
            texts = [m["text"] for m in client.get(
                f"/v1/jobs/{job_id}/messages?limit=100").json["messages"]]
            assert texts == [str(i) for i in range(30)], (job_id, texts)
            seqs = [e["seq"] for e in client.get(
                f"/v1/jobs/{job_id}/events?limit=200").json["events"]]
            assert seqs == list(range(1, len(seqs) + 1))
        assert "the database is unavailable; trying again" in server.log
        assert "internal error" not in server.log
    finally:
        server.stop()
