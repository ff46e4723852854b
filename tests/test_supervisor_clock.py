"""
The supervisor's parts, driven by Twisted's Clock: the real Supervisor, the
real job service and the real store on a SQLite file (through the
synchronous DB pool, so every transaction is done when its call returns),
with L{RecordingBackend} in place of processes.  Time passes only when a
test advances the clock: stop then kill after the grace, input timeouts,
walltime and memory limits, dispatch limits, and recovery after a restart.
"""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.task import Clock

from kree.backends.proctree import Usage
from kree.config import load_config
from kree.fetch import Fetcher
from kree.jobs import JobService
from kree.states import Action, JobState
from kree.supervisor import Supervisor
from clocked import START, fired, in_place, run, synchronous_store
from recording_backend import RecordingBackend

SHA = "ab" * 32
WAITING_LINE = {"type": "waiting", "n": 1, "actor": ".m.Ask", "prompt": {"fields": []}}


class World:
    """A store, a job service and supervisors over one clock and one SQLite file."""

    def __init__(self, tmp_path, clock: Clock) -> None:
        self.tmp_path = tmp_path
        self.clock = clock
        self.config = load_config(state_dir=tmp_path / "state", environ={})
        self.store = synchronous_store(tmp_path / "kree.db", clock)
        self.jobs = JobService(self.store, clock, self.config.jobs_dir)
        self.fetcher = Fetcher(self.config, self.store, clock)
        self.config.cache_dir.mkdir(parents=True, exist_ok=True)
        (self.config.cache_dir / SHA).write_bytes(b"<entity name='m'/>")
        self.frontends = {
            name: self.store.pool.run_in_thread(self.store.frontends.add_thd, name,
                                                f"{i:02x}" * 32, f"CN={name}").id
            for i, name in enumerate(("portal", "gateway"), 1)}
        self.supervisor: Supervisor | None = None
        self.backend: RecordingBackend | None = None

    def start(self, backend: RecordingBackend | None = None, *, stop_jobs_on_exit: bool = False,
              **settings) -> Supervisor:
        """A supervisor (with these [supervisor] settings) started over C{backend}."""
        config = attrs.evolve(self.config, supervisor=attrs.evolve(
            self.config.supervisor, **{"max_running": 2, "stop_grace_seconds": 10,
                                       "monitor_interval_seconds": 1, **settings}))
        self.backend = backend or RecordingBackend()
        self.supervisor = Supervisor(config, self.store, self.jobs, self.clock,
                                     fetcher=self.fetcher, backends={"local": self.backend},
                                     stop_jobs_on_exit=stop_jobs_on_exit, in_thread=in_place)
        self.backend.observer = self.supervisor.engine_events
        self.jobs.attach_engines(self.supervisor)
        fired(self.supervisor.startService())
        return self.supervisor

    def stop(self) -> None:
        fired(self.supervisor.stopService())

    def submit(self, frontend: str = "portal", *, queue: bool = True, **resources) -> str:
        job = run(self.jobs.create(self.frontends[frontend], "kree:workflow/" + SHA,
                                   resources=resources, workflow_sha256=SHA))
        if queue:
            run(self.jobs.apply(job.id, Action.QUEUE))
        return job.id

    def job(self, job_id: str):
        return run(self.store.jobs.get(job_id))

    def state(self, job_id: str) -> JobState:
        return self.job(job_id).state

    def close(self) -> None:
        if self.supervisor is not None and self.supervisor.running:
            self.stop()
        self.store.stop()


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def world(tmp_path, clock):
    world = World(tmp_path, clock)
    yield world
    world.close()


# -- dispatch -------------------------------------------------------------------------------


def test_a_queued_job_runs_in_its_prepared_directory(world):
    world.start()
    job_id = world.submit()
    assert world.backend.called("start") == [job_id]
    job = world.job(job_id)
    assert job.state is JobState.RUNNING and job.backend_ref == {"recorded": job_id}
    assert (world.config.jobs_dir / job_id / "workflow.xml").read_bytes() == b"<entity name='m'/>"


def test_no_more_jobs_than_max_running_and_a_freed_slot_is_filled(world):
    world.start(max_running=2)
    first, second, third = (world.submit() for _ in range(3))
    assert world.backend.called("start") == [first, second]
    assert world.state(third) is JobState.QUEUED
    assert world.supervisor.free_slots("local") == 0
    fired(world.backend.report(first, {"type": "end", "exit_code": 0}))
    fired(world.backend.exit(first, ended=True))
    assert world.state(first) is JobState.FINISHED
    assert world.backend.called("start") == [first, second, third]


def test_one_frontend_cannot_take_every_slot(world):
    world.start(max_running=3, max_running_per_frontend=1)
    mine = [world.submit("portal") for _ in range(2)]
    theirs = world.submit("gateway")
    assert world.backend.called("start") == [mine[0], theirs]
    assert world.state(mine[1]) is JobState.QUEUED
    fired(world.backend.exit(mine[0], ended=False))
    assert world.backend.called("start") == [mine[0], theirs, mine[1]]


def test_a_paused_queued_job_takes_no_slot(world):
    world.start(max_running=1)
    blocker = world.submit()
    held = world.submit()
    run(world.jobs.apply(held, Action.PAUSE))
    fired(world.backend.exit(blocker, ended=False))
    assert world.backend.called("start") == [blocker]
    run(world.jobs.apply(held, Action.RESUME))
    assert world.backend.called("start") == [blocker, held]


def test_an_engine_that_cannot_start_fails_its_job_and_frees_the_slot(world):
    backend = RecordingBackend()
    backend.start_error = OSError("no such interpreter")
    world.start(backend, max_running=1)
    job_id = world.submit()
    job = world.job(job_id)
    assert job.state is JobState.FAILED
    assert job.error == "the engine could not start: no such interpreter"
    assert world.supervisor.free_slots("local") == 1


def test_an_engine_that_vanished_fails_its_job(world):
    world.start()
    job_id = world.submit()
    fired(world.backend.exit(job_id, ended=False))
    job = world.job(job_id)
    assert job.state is JobState.FAILED
    assert job.error == "the engine exited without reporting its end (killed?)"
    assert job.backend_ref is None  # the engine is known to be gone


# -- actions -----------------------------------------------------------------------------------


def test_pause_and_resume_reach_the_engine(world):
    world.start()
    job_id = world.submit()
    run(world.jobs.apply(job_id, Action.PAUSE))
    run(world.jobs.apply(job_id, Action.RESUME))
    assert world.backend.called("pause") == [job_id]
    assert world.backend.called("resume") == [job_id]


def test_stop_terminates_then_kills_after_the_grace(world, clock):
    world.start(stop_grace_seconds=10)
    job_id = world.submit()
    run(world.jobs.apply(job_id, Action.STOP))
    assert world.state(job_id) is JobState.ABORTED
    assert world.backend.called("terminate") == [job_id]
    clock.advance(9.9)
    assert world.backend.called("kill") == []
    clock.advance(0.2)
    assert world.backend.called("kill") == [job_id]


def test_an_engine_that_ends_within_the_grace_is_not_killed(world, clock):
    world.start(stop_grace_seconds=10)
    job_id = world.submit()
    run(world.jobs.apply(job_id, Action.STOP))
    clock.advance(5)
    fired(world.backend.report(job_id, {"type": "end", "exit_code": 3, "state": "stopped"}))
    fired(world.backend.exit(job_id, ended=True))
    clock.advance(60)
    assert world.backend.called("kill") == []
    job = world.job(job_id)
    assert job.state is JobState.ABORTED and job.exit_code == 3


def test_kill_is_at_once(world):
    world.start()
    job_id = world.submit()
    run(world.jobs.apply(job_id, Action.KILL))
    assert world.backend.called("kill") == [job_id]
    assert world.backend.called("terminate") == []


# -- input timeout ---------------------------------------------------------------------------


def test_a_waiting_job_fails_when_its_input_timeout_passes(world, clock):
    world.start()
    job_id = world.submit(input_timeout=30)
    fired(world.backend.report(job_id, WAITING_LINE))
    assert world.state(job_id) is JobState.WAITING
    clock.advance(29)
    assert world.state(job_id) is JobState.WAITING
    clock.advance(2)
    job = world.job(job_id)
    assert job.state is JobState.FAILED and job.error == "input timeout"
    assert world.backend.called("kill") == [job_id]


def test_an_answer_in_time_cancels_the_input_timeout(world, clock):
    world.start()
    job_id = world.submit(input_timeout=30)
    fired(world.backend.report(job_id, WAITING_LINE))
    clock.advance(20)
    run(world.supervisor.answer(world.job(job_id), 1, {"name": "Ada"}, frontend_id=None))
    assert world.backend.answers == [(job_id, 1, {"name": "Ada"})]
    clock.advance(60)
    assert world.state(job_id) is JobState.RUNNING
    assert world.backend.called("kill") == []


def test_paused_time_does_not_count_towards_the_input_timeout(world, clock):
    world.start()
    job_id = world.submit(input_timeout=30)
    fired(world.backend.report(job_id, WAITING_LINE))
    clock.advance(20)
    run(world.jobs.apply(job_id, Action.PAUSE))
    clock.advance(100)
    assert world.state(job_id) is JobState.PAUSED
    run(world.jobs.apply(job_id, Action.RESUME))  # WAITING again, a new timer
    clock.advance(29)
    assert world.state(job_id) is JobState.WAITING
    clock.advance(2)
    assert world.job(job_id).error == "input timeout"


# -- monitoring and limits --------------------------------------------------------------------


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "together"])
def test_walltime_fails_the_job_then_stops_its_engine(world, clock, together):
    world.start(RecordingBackend(samples_together=together), stop_grace_seconds=10,
                monitor_interval_seconds=1)
    job_id = world.submit(walltime=60)
    clock.pump([1] * 60)
    assert world.state(job_id) is JobState.RUNNING
    clock.advance(1)
    job = world.job(job_id)
    assert job.state is JobState.FAILED and job.error == "walltime"
    assert world.backend.called("terminate") == [job_id]
    clock.advance(10.5)
    assert world.backend.called("kill") == [job_id]
    # The engine's own end (exit 3, "stopped") comes later and must not
    # replace the reason.
    fired(world.backend.report(job_id, {"type": "end", "exit_code": 3, "state": "stopped"}))
    fired(world.backend.exit(job_id, ended=True))
    job = world.job(job_id)
    assert (job.state, job.error, job.exit_code) == (JobState.FAILED, "walltime", 3)


def test_a_job_without_walltime_is_held_to_the_default(world, clock):
    world.start(default_walltime_seconds=100, monitor_interval_seconds=10)
    job_id = world.submit()
    clock.pump([10] * 10)
    assert world.state(job_id) is JobState.RUNNING
    clock.advance(10)
    assert world.job(job_id).error == "walltime"


def test_paused_time_does_not_count_towards_the_walltime(world, clock):
    world.start(monitor_interval_seconds=1)
    job_id = world.submit(walltime=60)
    clock.pump([1] * 50)
    run(world.jobs.apply(job_id, Action.PAUSE))
    clock.pump([1] * 100)
    run(world.jobs.apply(job_id, Action.RESUME))
    clock.pump([1] * 9)
    assert world.state(job_id) is JobState.RUNNING
    clock.pump([1] * 2)
    assert world.job(job_id).error == "walltime"


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "together"])
def test_usage_is_recorded_and_memory_over_the_limit_kills(world, clock, together):
    backend = RecordingBackend(samples_together=together)
    world.start(backend, monitor_interval_seconds=1)
    job_id = world.submit(memory=100 * 2**20)
    backend.usages[job_id] = Usage(cpu_seconds=1.23456, rss_bytes=50 * 2**20, processes=2)
    clock.advance(1)
    job = world.job(job_id)
    assert (job.cpu_seconds, job.peak_memory_bytes) == (1.235, 50 * 2**20)
    backend.usages[job_id] = Usage(cpu_seconds=2.0, rss_bytes=10 * 2**20, processes=2)
    clock.advance(1)
    assert world.job(job_id).peak_memory_bytes == 50 * 2**20  # the peak stays
    backend.usages[job_id] = Usage(cpu_seconds=3.0, rss_bytes=101 * 2**20, processes=2)
    clock.advance(1)
    job = world.job(job_id)
    assert job.state is JobState.FAILED and job.error == "memory"
    assert backend.called("kill") == [job_id] and backend.called("terminate") == []


# -- recovery after a restart ------------------------------------------------------------------


def test_a_restart_kills_the_engine_of_a_job_that_failed_on_a_limit(world, clock):
    # kreed stops during the grace that follows a walltime failure: the job is
    # FAILED, its engine was sent SIGTERM but never killed.
    world.start(stop_grace_seconds=10, monitor_interval_seconds=1)
    job_id = world.submit(walltime=5)
    clock.pump([1] * 7)
    assert world.job(job_id).error == "walltime"
    assert world.backend.called("kill") == []
    world.stop()
    clock.advance(60)
    assert world.backend.called("kill") == []  # the stop cancelled the kill timer

    restarted = RecordingBackend()
    restarted.alive_on_adopt = {job_id}
    world.start(restarted)
    assert restarted.called("adopt") == [job_id]
    assert restarted.called("kill") == [job_id]
    fired(restarted.exit(job_id, ended=False, adopted=True))
    job = world.job(job_id)
    assert job.state is JobState.FAILED and job.error == "walltime"  # the reason stands
    assert job.backend_ref is None
    assert world.supervisor.running_count == 0

    # Its engine is known gone now: the next restart does not look for it.
    world.stop()
    again = RecordingBackend()
    world.start(again)
    assert again.calls == []


def test_a_restart_follows_an_ended_job_whose_engine_went_meanwhile(world):
    world.start()
    job_id = world.submit()
    run(world.jobs.apply(job_id, Action.STOP))
    world.stop()  # during the grace
    restarted = RecordingBackend()  # the engine is gone
    world.start(restarted)
    assert restarted.called("adopt") == [job_id] and restarted.called("kill") == []
    fired(restarted.exit(job_id, ended=True, adopted=True))
    assert world.job(job_id).backend_ref is None
    assert world.state(job_id) is JobState.ABORTED


def test_a_restart_adopts_running_jobs_and_fails_those_lost(world, clock):
    world.start(max_running=4)
    alive, lost, waiting, paused = (world.submit(input_timeout=30) for _ in range(4))
    fired(world.backend.report(waiting, WAITING_LINE))
    run(world.jobs.apply(paused, Action.PAUSE))
    world.stop()

    restarted = RecordingBackend()
    restarted.alive_on_adopt = {alive, waiting, paused}
    world.start(restarted, max_running=4)
    assert sorted(restarted.called("adopt")) == sorted([alive, lost, waiting, paused])
    assert restarted.called("pause") == [paused]  # anything forked meanwhile stops too
    fired(restarted.exit(lost, ended=False, adopted=True))
    assert world.job(lost).error == "lost during daemon restart"
    assert world.supervisor.running_count == 3
    clock.advance(31)  # the WAITING job's input timer was armed again
    assert world.job(waiting).error == "input timeout"
    assert restarted.called("kill") == [waiting]


def test_a_restart_dispatches_nothing_before_recovery_is_done(world):
    world.start(max_running=1)
    running = world.submit()
    queued = world.submit()
    world.stop()
    restarted = RecordingBackend()
    restarted.alive_on_adopt = {running}
    world.start(restarted, max_running=1)
    # The adopted engine holds the only slot: the queued job waits.
    assert restarted.called("start") == []
    assert world.state(queued) is JobState.QUEUED
    fired(restarted.exit(running, ended=False, adopted=True))
    assert restarted.called("start") == [queued]


def test_stop_jobs_on_exit_stops_then_kills(world, clock):
    world.start(stop_grace_seconds=10, stop_jobs_on_exit=True)
    job_id = world.submit()
    stopping = world.supervisor.stopService()
    assert world.state(job_id) is JobState.ABORTED
    assert world.backend.called("terminate") == [job_id]
    assert not stopping.called  # waits for the engine to go
    clock.advance(10.5)
    assert world.backend.called("kill") == [job_id]
    fired(world.backend.exit(job_id, ended=False))
    fired(stopping)
    assert world.backend.called("detach") == [None]
