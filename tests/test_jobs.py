"""The job service: the one write path for state, its observers, and deleting jobs."""

import hashlib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from kree.errors import InvalidRequest, InvalidTransition, JobNotFound, NotWaiting
from kree.config import load_config
from kree.fetch import Fetcher, FetchError
from kree.jobs import JobService, Submission
from kree.jobspec import InvalidJobSpec
from kree.states import Action, JobState
from kree.validation import WorkflowChecker

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"


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


@pytest_twisted.ensureDeferred
async def test_delete_removes_the_record_then_the_directory(service, store, frontend):
    job = await service.create(frontend.id, "kree:workflow/abc")
    job_dir = Path(job.job_dir)
    (job_dir / "products").mkdir(parents=True)
    (job_dir / "products" / "result.txt").write_text("42")
    queued = await service.apply(job.id, Action.QUEUE)
    with pytest.raises(InvalidTransition):  # only NEW and ended jobs
        await service.delete(queued.id)
    assert job_dir.is_dir()
    await service.apply(job.id, Action.STOP)
    deleted = await service.delete(job.id, frontend_id=frontend.id)
    assert deleted.id == job.id and not job_dir.exists()
    with pytest.raises(JobNotFound):
        await store.jobs.get(job.id)


@pytest_twisted.ensureDeferred
async def test_purge_deletes_old_ended_and_new_jobs_only(service, store, frontend, tmp_path):
    ended = await service.create(frontend.id, "kree:workflow/abc")
    await service.apply(ended.id, Action.STOP)
    new = await service.create(frontend.id, "kree:workflow/abc")
    queued = await service.create(frontend.id, "kree:workflow/abc")
    await service.apply(queued.id, Action.QUEUE)
    for job in (ended, new, queued):
        Path(job.job_dir).mkdir(parents=True)
    steps = []
    # Nothing is old enough yet.
    assert await service.purge(3600, [JobState.ABORTED, JobState.NEW]) == 0
    # Everything is now: the ended job goes, the NEW one only when asked for.
    assert await service.purge(0, [JobState.ABORTED], lambda *step: steps.append(step)) == 1
    assert steps == [(0, 1), (1, 1)] and not Path(ended.job_dir).exists()
    assert await service.purge(0, [JobState.NEW, JobState.ABORTED]) == 1
    assert not Path(new.job_dir).exists() and Path(queued.job_dir).is_dir()
    assert (await store.jobs.get(queued.id)).state is JobState.QUEUED
    with pytest.raises(InvalidRequest, match="not QUEUED, RUNNING"):
        await service.purge(0, [JobState.RUNNING, JobState.QUEUED])


@pytest_twisted.ensureDeferred
async def test_editing_a_new_job_is_an_event_and_only_while_new(service, store, frontend):
    seen = []
    job = await service.create(frontend.id, "kree:workflow/abc", parameters={".m.a": 1})
    service.add_observer(seen.append)
    detail = await service.edit_new(job.id, frontend_id=frontend.id,
                                    parameters={".m.a": None, ".m.b": 2})
    assert detail.parameters == {".m.b": 2}
    detail = await service.edit_new(job.id, inputs={"data": "https://example.org/d.csv"})
    assert [(i.name, i.uri) for i in detail.inputs] == [("data", "https://example.org/d.csv")]
    detail = await service.edit_new(job.id, resources={"cpus": 2, "priority": 5})
    assert detail.job.resources == {"cpus": 2, "priority": 5} and detail.job.priority == 5
    assert [(e.seq, e.type) for e in seen] == [(2, "job.updated"), (3, "job.updated"),
                                                (4, "job.updated")]
    assert [e.data for e in seen] == [
        {"parameters": {".m.a": None, ".m.b": 2}},
        {"inputs": {"data": "https://example.org/d.csv"}},
        {"resources": {"cpus": 2, "priority": 5}}]
    assert [e.to_json() for e in await store.events.list_for_job(job.id)][1:] == [
        e.to_json() for e in seen]

    await service.apply(job.id, Action.QUEUE)
    seen.clear()
    with pytest.raises(InvalidTransition, match="cannot set parameters of a job in state "
                                                "QUEUED: only while NEW"):
        await service.edit_new(job.id, parameters={".m.b": 3})
    with pytest.raises(JobNotFound):
        await service.edit_new(job.id, frontend_id=frontend.id + 1, resources={})
    assert seen == [] and (await store.jobs.get_detail(job.id, None)).parameters == {".m.b": 2}


# -- submitting: the real fetcher and the engine's real check ---------------------------

@pytest_twisted.async_yield_fixture
async def submitting(store, tmp_path):
    """A job service that fetches from the repository's workflows/ and checks with the engine."""
    config_path = tmp_path / "kree.toml"
    config_path.write_text(f'state_dir = "{tmp_path / "state"}"\n[fetch]\n'
                           f'file_roots = ["{WORKFLOWS}"]\n')
    config = load_config(config_path)
    fetcher = Fetcher(config, store, reactor)
    yield JobService(store, reactor, tmp_path / "jobs", workflows=fetcher,
                     checker=WorkflowChecker(reactor))
    await fetcher.close()


@pytest_twisted.ensureDeferred
async def test_submit_checks_then_creates_and_queues_in_one_go(submitting, store, frontend):
    seen = []
    submitting.add_observer(seen.append)
    detail = await submitting.submit(Submission(
        frontend_id=frontend.id, workflow=(WORKFLOWS / "hello.xml").as_uri(), user="ada",
        resources={"priority": 3}, queue=True))
    job = detail.job
    assert (job.state, job.priority, job.user) == (JobState.QUEUED, 3, "ada")
    assert job.workflow_sha256 == hashlib.sha256((WORKFLOWS / "hello.xml").read_bytes()).hexdigest()
    assert [(e.seq, e.type) for e in seen] == [(1, "job.created"), (2, "job.state")]
    assert seen[1].data["reason"] == "queued at creation"
    checked = await submitting.workflow_check_of(job)
    assert checked.valid and checked.parameters


@pytest_twisted.ensureDeferred
async def test_submit_refuses_before_storing_anything(submitting, store, frontend):
    hello = (WORKFLOWS / "hello.xml").as_uri()
    with pytest.raises(InvalidJobSpec) as caught:
        await submitting.submit(Submission(frontend_id=frontend.id, workflow=hello,
                                           parameters={".hello.NoSuchActor.x": 1}))
    assert caught.value.code == "invalid_parameter"
    assert caught.value.details == {"unknown": [".hello.NoSuchActor.x"]}
    # Another frontend's upload (or none at all) is not found.
    with pytest.raises(InvalidJobSpec) as caught:
        await submitting.submit(Submission(frontend_id=frontend.id,
                                           workflow="kree:workflow/" + "ab" * 32))
    assert caught.value.code == "workflow_not_found"
    with pytest.raises(FetchError):
        await submitting.submit(Submission(frontend_id=frontend.id,
                                           workflow=(WORKFLOWS / "missing.xml").as_uri()))
    assert await store.jobs.list(frontend_id=frontend.id, limit=10) == []


@pytest_twisted.ensureDeferred
async def test_reads_page_and_stay_within_the_frontend(service, frontend, other_frontend):
    made = [await service.create(frontend.id, "kree:workflow/abc") for _ in range(3)]
    await service.create(other_frontend.id, "kree:workflow/abc")
    first, following = await service.list(frontend.id, limit=2)
    assert len(first) == 2 and following == first[-1].id
    rest, following = await service.list(frontend.id, after=following, limit=2)
    assert len(rest) == 1 and following is None
    assert sorted(job.id for job in first + rest) == sorted(job.id for job in made)
    assert (await service.detail(made[0].id, frontend_id=frontend.id)).job.id == made[0].id
    for job_id in (made[0].id, "not a job id"):
        with pytest.raises(JobNotFound):
            await service.get(job_id, frontend_id=other_frontend.id)
    assert [e.type for e in await service.events(made[0].id, 0, 10)] == ["job.created"]
    assert await service.messages(made[0].id, 0, 10) == []
    with pytest.raises(NotWaiting, match="job is NEW, not WAITING for input"):
        await service.prompt(made[0])
    with pytest.raises(NotWaiting):
        await service.answer(made[0].id, {"name": "x"}, frontend_id=frontend.id)
