"""
Slurm polling, driven by the clock: the real SlurmBackend under the real
Supervisor, job service and store (a SQLite file through the synchronous DB
pool), on tests/clocked.py's Reactor, whose processes are the test's: each
sbatch, squeue and sacct the backend runs is answered here.  No Slurm runs;
test_slurm.py keeps the end-to-end tests on a real cluster.
"""

from __future__ import annotations

import json

import attrs
import pytest

from kree.backends.slurm import SlurmBackend, SlurmConfig
from kree.config import load_config
from kree.fetch import Fetcher
from kree.jobs import JobService
from kree.states import Action, JobState
from kree.supervisor import Supervisor
from clocked import Reactor, fired, run, synchronous_store

SHA = "ab" * 32
POLL, EVENTS_POLL = 2.0, 0.5


class Cluster:
    def __init__(self, tmp_path) -> None:
        self.reactor = reactor = Reactor()
        config = load_config(state_dir=tmp_path / "state", environ={})
        self.config = config = attrs.evolve(
            config, supervisor=attrs.evolve(config.supervisor, monitor_interval_seconds=3600))
        settings = SlurmConfig(enabled=True, bin_dir="/slurm/bin", poll_seconds=POLL,
                               events_poll_seconds=EVENTS_POLL)
        self.store = synchronous_store(tmp_path / "kree.db", reactor)
        self.frontend = self.store.pool.run_in_thread(
            self.store.frontends.add_thd, "portal", "ab" * 32, "CN=portal").id
        self.jobs = JobService(self.store, reactor, config.jobs_dir,
                               job_roots={"local": config.jobs_dir, "slurm": config.jobs_dir})
        fetcher = Fetcher(config, self.store, reactor)
        config.cache_dir.mkdir(parents=True, exist_ok=True)
        (config.cache_dir / SHA).write_bytes(b"<entity name='m'/>")
        self.backend = SlurmBackend(reactor, None, settings, python="/usr/bin/python3")
        self.supervisor = Supervisor(config, self.store, self.jobs, reactor, fetcher=fetcher,
                                     backends={"slurm": self.backend})
        self.backend.observer = self.supervisor.engine_events
        self.jobs.attach_engines(self.supervisor)
        self.started = self.supervisor.startService()

    def answer(self, command: str, out: str = "", code: int = 0) -> list[str]:
        """Answer the one running C{command}; its arguments."""
        (process,) = self.reactor.unanswered(command)
        process.finish(out, code=code)
        return process.args

    def squeue_line(self, job_id: str, state: str, reason: str = "None") -> str:
        return f"4242|{state}|{'node1' if state != 'PENDING' else ''}|{reason}|kree-{job_id}\n"

    def submit(self) -> str:
        job = run(self.jobs.create(self.frontend, "kree:workflow/" + SHA,
                                   resources={"backend": "slurm"}, workflow_sha256=SHA))
        run(self.jobs.apply(job.id, Action.QUEUE))
        return job.id

    def job(self, job_id: str):
        return run(self.store.jobs.get(job_id))

    def messages(self, job_id: str) -> list[str]:
        return [m.text for m in run(self.store.jobs.list_messages(job_id))]

    def close(self) -> None:
        for process in self.reactor.unanswered():
            process.finish()
        stopping = self.supervisor.stopService()
        for process in self.reactor.unanswered():
            process.finish()
        fired(stopping)
        self.store.stop()


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.close()


def test_one_squeue_each_poll_interval_while_kree_has_jobs_in_slurm(cluster):
    reactor = cluster.reactor
    cluster.answer("squeue")  # the first look, before anything is adopted
    fired(cluster.started)
    reactor.advance(10 * POLL)
    assert len(reactor.spawned("squeue")) == 1  # no job in Slurm: nothing to ask

    job_id = cluster.submit()
    args = cluster.answer("sbatch", "4242\n")
    assert f"--job-name=kree-{job_id}" in args and "--no-requeue" in args
    assert cluster.job(job_id).backend_ref == {"slurm_job_id": 4242}
    # Submitting looks at once; the job stays QUEUED while Slurm holds it.
    cluster.answer("squeue", cluster.squeue_line(job_id, "PENDING", "Resources"))
    job = cluster.job(job_id)
    assert job.state is JobState.QUEUED
    assert cluster.messages(job_id)[-1].startswith("pending in Slurm as job 4242")

    polls = len(reactor.spawned("squeue"))
    reactor.advance(POLL - EVENTS_POLL)
    assert len(reactor.spawned("squeue")) == polls  # not before the interval
    reactor.advance(EVENTS_POLL)
    assert len(reactor.spawned("squeue")) == polls + 1
    cluster.answer("squeue", cluster.squeue_line(job_id, "RUNNING"))
    assert cluster.job(job_id).state is JobState.RUNNING

    # The engine writes; the events file is read every events poll, not every squeue.
    events = cluster.config.jobs_dir / job_id / "events.jsonl"
    events.write_text(json.dumps({"type": "message", "text": "42"}) + "\n")
    reactor.advance(EVENTS_POLL)
    assert cluster.messages(job_id)[-1] == "42"

    with events.open("a") as f:
        f.write(json.dumps({"type": "end", "exit_code": 0}) + "\n")
    reactor.advance(EVENTS_POLL)
    # The end is held back until Slurm says the job has ended.
    assert cluster.job(job_id).state is JobState.RUNNING
    reactor.advance(POLL)
    cluster.answer("squeue", cluster.squeue_line(job_id, "COMPLETED"))
    job = cluster.job(job_id)
    assert job.state is JobState.FINISHED and job.exit_code == 0
    assert job.backend_ref is None
    reactor.advance(10 * POLL)
    assert reactor.unanswered("squeue") == []  # nothing left to follow


def test_slurm_s_time_limit_wins_over_the_engine_s_exit(cluster):
    cluster.answer("squeue")
    fired(cluster.started)
    job_id = cluster.submit()
    cluster.answer("sbatch", "4242\n")
    cluster.answer("squeue", cluster.squeue_line(job_id, "RUNNING"))
    events = cluster.config.jobs_dir / job_id / "events.jsonl"
    events.write_text(json.dumps({"type": "end", "exit_code": 3}) + "\n")
    cluster.reactor.advance(POLL)
    cluster.answer("squeue", cluster.squeue_line(job_id, "TIMEOUT"))
    job = cluster.job(job_id)
    assert job.state is JobState.FAILED and job.error == "walltime"


def test_a_job_that_left_squeue_is_looked_up_in_sacct(cluster):
    cluster.answer("squeue")
    fired(cluster.started)
    job_id = cluster.submit()
    cluster.answer("sbatch", "4242\n")
    cluster.answer("squeue", cluster.squeue_line(job_id, "RUNNING"))
    for _ in range(2):  # gone from squeue's view twice in a row
        cluster.reactor.advance(POLL)
        cluster.answer("squeue", "")
    args = cluster.answer("sacct", f"4242|NODE_FAIL|kree-{job_id}\n")
    assert "--jobs=4242" in args
    job = cluster.job(job_id)
    assert job.state is JobState.FAILED and job.error == "node failure (Slurm NODE_FAIL)"
