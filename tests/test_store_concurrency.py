"""
Many writers on the same jobs at once, on the real PostgreSQL server (and on
a SQLite file): nothing is lost and every job's event seqs have no gaps.

Eight writers, on the daemon's own path (the job service, through the pool's
threads, eight of them), mix messages, transitions, engine events (group
commits over several jobs, in varying order), monitoring updates and deletes
on a few jobs.  Every write either happens whole or is refused for a reason
of the job's own (its state, its deletion); a write that fails for any other
reason (a deadlock the pool gave up on, say) fails the test.  Afterwards what
is stored is exactly what the observers were told.
"""

import random

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from kree.errors import InvalidTransition, JobNotFound
from kree.jobs import JobService
from kree.states import Action
from kree.store import Store, migrate

WRITERS = 8
JOBS = 3
STEPS = 16
# Deletes come late, so that most steps still find their job.
DELETE_FROM_STEP = 12
REPEATS = 20


@pytest.fixture
def store(store_url):
    """A started store with eight DB threads (SQLite keeps its one)."""
    store = Store.from_url(store_url, reactor, pool_size=WRITERS)
    store.start()
    store.pool.run_in_thread(migrate.upgrade)
    yield store
    store.stop()


@pytest.fixture
def frontend(store):
    return store.pool.run_in_thread(store.frontends.add_thd, "portal", "ab" * 32, "CN=portal")


class EngineFeeds:
    """
    Each job's engine event file, as the daemon reads it: one reader per job,
    so the lines consumed only grow.  A group commit takes the feeds of its
    jobs (in id order, so the test itself cannot deadlock) and hands the
    batches to the store in an order of its own.
    """

    def __init__(self, job_ids) -> None:
        self.consumed = {job_id: 0 for job_id in job_ids}
        self.locks = {job_id: defer.DeferredLock() for job_id in job_ids}


async def _group_commit(service, feeds: EngineFeeds, rng: random.Random, job_ids, tag: str):
    chosen = sorted(rng.sample(job_ids, 2))
    for job_id in chosen:
        await feeds.locks[job_id].acquire()
    try:
        batches = []
        for job_id in chosen:
            lines = [{"type": "message", "text": f"{tag} engine", "actor": ".m.A"},
                     {"type": "progress", "fraction": rng.random()}]
            batches.append((job_id, lines, feeds.consumed[job_id] + len(lines)))
        rng.shuffle(batches)
        results = await service.apply_engine_events_many(batches)
        for (job_id, _, consumed), result in zip(batches, results):
            if not isinstance(result, JobNotFound):
                feeds.consumed[job_id] = consumed
    finally:
        for job_id in chosen:
            feeds.locks[job_id].release()


async def _writer(n: int, seed: int, service, store, feeds, job_ids, refused: list) -> None:
    rng = random.Random(seed * 1000 + n)
    for step in range(STEPS):
        tag = f"writer {n} step {step}"
        job_id = rng.choice(job_ids)
        kinds = ["message", "transition", "engine", "monitor"]
        if step >= DELETE_FROM_STEP:
            kinds.append("delete")
        kind = rng.choice(kinds)
        try:
            if kind == "message":
                await service.add_message(job_id, tag)
            elif kind == "transition":
                await service.apply(job_id, rng.choice([Action.PAUSE, Action.RESUME]))
            elif kind == "engine":
                await _group_commit(service, feeds, rng, job_ids, tag)
            elif kind == "monitor":
                await store.jobs.update_runtime(job_id, cpu_seconds=float(step))
            else:
                try:
                    await service.apply(job_id, Action.KILL, reason=tag)
                except InvalidTransition:
                    pass  # killed already
                await service.delete(job_id)
        except (InvalidTransition, JobNotFound) as e:
            refused.append((tag, kind, type(e).__name__))


@pytest.mark.parametrize("repeat", range(REPEATS))
@pytest_twisted.ensureDeferred
async def test_eight_writers_lose_nothing(store, frontend, tmp_path, repeat):
    service = JobService(store, reactor, tmp_path / "jobs")
    told = []
    service.add_observer(told.append)
    job_ids = []
    for _ in range(JOBS):
        job = await service.create(frontend.id, "kree:workflow/" + "0" * 64)
        await service.apply(job.id, Action.QUEUE)
        await service.apply(job.id, Action.DISPATCH)
        job_ids.append(job.id)
    feeds = EngineFeeds(job_ids)
    refused: list = []

    # Every writer runs to its end; the first unexpected error is raised after.
    results = await defer.DeferredList(
        [defer.Deferred.fromCoroutine(
            _writer(n, repeat, service, store, feeds, job_ids, refused))
         for n in range(WRITERS)],
        consumeErrors=True)
    for ok, result in results:
        if not ok:
            result.raiseException()

    for job_id in job_ids:
        stored = await store.events.list_for_job(job_id, 0, 100_000)
        seqs = [e.seq for e in stored]
        assert seqs == list(range(1, len(seqs) + 1)), (job_id, seqs)
        # Exactly what was committed and announced, no more and no less.
        announced = sorted((e for e in told if e.job_id == job_id), key=lambda e: e.seq)
        assert [e.to_json() for e in stored] == [e.to_json() for e in announced]
        # Each state event starts where the one before it ended.
        state = None
        for e in stored:
            if e.type == "job.state":
                assert state is None or e.data["from"] == state, (job_id, e)
                state = e.data["to"]
        deleted = stored[-1].type == "job.deleted"
        assert not any(e.type == "job.deleted" for e in stored[:-1])
        if deleted:
            with pytest.raises(JobNotFound):
                await store.jobs.get(job_id)
            continue
        job = await store.jobs.get(job_id)
        assert job.last_seq == len(stored)
        assert job.state.value == state
        # Every message of an event is stored, in the order of the events,
        # and no message without one.
        messages = await store.jobs.list_messages(job_id, 0, 100_000)
        assert [m.id for m in messages] == [
            e.data["id"] for e in stored if e.type == "job.message"]
        # The engine's lines consumed are the ones recorded, none twice.
        assert job.events_consumed == feeds.consumed[job_id]
        engine_messages = sum(e.type == "job.message" and e.data["source"] == ".m.A"
                              for e in stored)
        assert 2 * engine_messages == feeds.consumed[job_id]
