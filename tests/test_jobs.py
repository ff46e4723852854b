"""The job service: the one write path for state, and its observers."""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from kree.errors import InvalidTransition, JobNotFound
from kree.jobs import JobService
from kree.states import Action, JobState


@pytest.fixture
def service(store, tmp_path):
    return JobService(store, reactor, tmp_path / "jobs")


@pytest_twisted.ensureDeferred
async def test_lifecycle_through_the_service(service, store, frontend, tmp_path):
    seen = []
    service.add_observer(seen.append)
    job = await service.create(frontend.id, "kree:workflow/abc", user="alice",
                               parameters={".m.Ramp.step": 3})
    assert job.state is JobState.NEW
    assert job.job_dir == str(tmp_path / "jobs" / job.id)
    for action in (Action.QUEUE, Action.DISPATCH, Action.ASK_INPUT, Action.PAUSE,
                   Action.RESUME, Action.ANSWER):
        job = await service.apply(job.id, action, frontend_id=frontend.id)
    assert job.state is JobState.RUNNING
    await service.add_message(job.id, "42", source=".m.Display")
    job = await service.apply(job.id, Action.FINISH, updates={"exit_code": 0})
    assert job.state is JobState.FINISHED and job.exit_code == 0
    # Observers saw every event, in order, and only committed ones.
    assert [e.seq for e in seen] == list(range(1, 10))
    assert [e.type for e in seen] == ["job.created"] + ["job.state"] * 6 + [
        "job.message", "job.state"]
    stored = await store.events.list_for_job(job.id)
    assert [e.to_json() for e in stored] == [e.to_json() for e in seen]
    deleted = await service.delete(job.id, frontend_id=frontend.id)
    assert deleted.id == job.id and seen[-1].type == "job.deleted"


@pytest_twisted.ensureDeferred
async def test_refused_actions_tell_no_observer(service, frontend, other_frontend):
    seen = []
    job = await service.create(frontend.id, "kree:workflow/abc")
    service.add_observer(seen.append)
    with pytest.raises(InvalidTransition, match="cannot resume a job in state NEW"):
        await service.apply(job.id, Action.RESUME)
    with pytest.raises(JobNotFound):
        await service.apply(job.id, Action.QUEUE, frontend_id=other_frontend.id)
    with pytest.raises(JobNotFound):
        await service.delete(job.id, frontend_id=other_frontend.id)
    assert seen == []


@pytest_twisted.ensureDeferred
async def test_a_failing_observer_neither_undoes_nor_blocks(service, store, frontend):
    logged = []
    globalLogPublisher.addObserver(logged.append)
    seen = []

    def broken(event):
        raise RuntimeError("observer bug")

    service.add_observer(broken)
    service.add_observer(seen.append)
    try:
        job = await service.create(frontend.id, "kree:workflow/abc")
        job = await service.apply(job.id, Action.QUEUE)
    finally:
        globalLogPublisher.removeObserver(logged.append)
        service.remove_observer(broken)
    assert job.state is JobState.QUEUED
    assert (await store.jobs.get(job.id)).state is JobState.QUEUED
    assert len(seen) == 2
    failures = [e for e in logged if "log_failure" in e]
    assert len(failures) == 2
    assert all(f["log_failure"].check(RuntimeError) for f in failures)
