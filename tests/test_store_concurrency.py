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
import threading

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from kree.errors import DatabaseUnavailable, InvalidTransition, JobNotFound
from kree.ids import new_job_id
from kree.jobs import JobService
from kree.states import Action
from kree.store import Store, migrate
from kree.store.pool import (CONFLICT_FIRST_DELAY_SECONDS, CONFLICT_MAX_DELAY_SECONDS,
                             CONFLICT_RETRIES, conflict_delay)

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


# -- the pool's retries after conflicts, provoked for real on the server -------------------


@pytest.fixture
def pg_store(postgres_url):
    store = Store.from_url(postgres_url, reactor, pool_size=WRITERS)
    store.start()
    store.pool.run_in_thread(migrate.upgrade)
    yield store
    store.stop()


def _new_job(store, frontend_id: int) -> str:
    job_id = new_job_id()
    store.pool.run_in_thread(store.jobs.create_thd, job_id=job_id, frontend_id=frontend_id,
                             workflow_uri="kree:workflow/" + "0" * 64, job_dir=f"/jobs/{job_id}")
    return job_id


@pytest.mark.postgresql
def test_a_deadlock_is_run_again(pg_store, pool_log):
    """
    Two transactions write two jobs in opposite orders (what a transaction
    on several jobs that does not use lock_many_thd can do): the server
    detects the deadlock and rolls one back, and the pool runs that one
    again; both changes are made, once each.
    """
    store = pg_store
    frontend = store.pool.run_in_thread(store.frontends.add_thd, "portal", "ab" * 32,
                                        "CN=portal")
    first, second = (_new_job(store, frontend.id) for _ in range(2))
    both_hold_one = threading.Barrier(2, timeout=60)
    runs = {"a": 0, "b": 0}
    outcomes = {}

    def write_both(conn, name, order):
        runs[name] += 1
        store.jobs.add_message_thd(conn, order[0], f"{name} first")
        if runs[name] == 1:
            both_hold_one.wait()  # each holds one job row and now asks for the other
        store.jobs.add_message_thd(conn, order[1], f"{name} second")
        return name

    def writer(name, order):
        try:
            outcomes[name] = store.pool.run_in_thread(write_both, name, order)
        except Exception as e:  # reported below
            outcomes[name] = e

    threads = [threading.Thread(target=writer, args=("a", (first, second))),
               threading.Thread(target=writer, args=("b", (second, first)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert outcomes == {"a": "a", "b": "b"}
    assert sorted(runs.values()) == [1, 2]  # one lost the deadlock and ran again
    assert any("40P01 deadlock" in line and "retry 1" in line for line in pool_log), pool_log
    for job_id in (first, second):
        events = store.pool.run_in_thread(store.events.list_for_job_thd, job_id, 0, 100)
        assert [e.seq for e in events] == [1, 2, 3]
        texts = sorted(m.text for m in store.pool.run_in_thread(
            store.jobs.list_messages_thd, job_id))
        assert len(texts) == 2 and {t.split()[0] for t in texts} == {"a", "b"}


def _repeatable_read_update(store, side, job_id, runs: list, conflicting_runs: int):
    """
    A REPEATABLE READ transaction that reads the job, then (while another
    session changes the job and commits, in its first C{conflicting_runs}
    runs) writes it: the server refuses with a serialization failure.
    """

    def update(conn):
        runs.append(len(runs) + 1)
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        store.jobs.get_thd(conn, job_id)  # the snapshot is taken here
        if len(runs) <= conflicting_runs:
            side.execute(sa.text("UPDATE jobs SET progress = :p WHERE id = :id"),
                         {"p": len(runs) / 100, "id": job_id})
        store.jobs.update_runtime_thd(conn, job_id, cpu_seconds=42.0)
        return len(runs)

    return update


@pytest.mark.postgresql
def test_a_serialization_failure_is_run_again(pg_store, side, pool_log):
    store = pg_store
    frontend = store.pool.run_in_thread(store.frontends.add_thd, "portal", "ab" * 32,
                                        "CN=portal")
    job_id = _new_job(store, frontend.id)
    runs: list = []
    update = _repeatable_read_update(store, side, job_id, runs, conflicting_runs=1)
    assert store.pool.run_in_thread(update) == 2
    assert runs == [1, 2]
    job = store.pool.run_in_thread(store.jobs.get_thd, job_id)
    assert (job.cpu_seconds, job.progress) == (42.0, 0.01)
    assert any("40001 serialization failure" in line and "retry 1" in line
               for line in pool_log), pool_log


@pytest.mark.postgresql
@pytest_twisted.ensureDeferred
async def test_conflicts_without_end_are_given_up(pg_store, side, pool_log):
    """A bounded number of runs, then the daemon's 503 (the request was fine)."""
    store = pg_store
    frontend = await store.frontends.add("portal", "ab" * 32, "CN=portal")
    job_id = await deferToThread(_new_job, store, frontend.id)
    runs: list = []
    update = _repeatable_read_update(store, side, job_id, runs, conflicting_runs=1_000)
    with pytest.raises(DatabaseUnavailable, match="conflicted with others") as info:
        await store.pool.run(update)
    assert info.value.status == 503
    assert isinstance(info.value.__cause__, sa.exc.OperationalError)
    assert info.value.__cause__.orig.sqlstate == "40001"
    assert len(runs) == CONFLICT_RETRIES + 1
    assert any("giving up" in line for line in pool_log), pool_log
    assert (await store.jobs.get(job_id)).cpu_seconds is None  # never written


def test_conflict_backoff_grows_is_capped_and_jittered():
    for attempt in range(1, 12):
        ceiling = min(CONFLICT_MAX_DELAY_SECONDS, CONFLICT_FIRST_DELAY_SECONDS * 2 ** (attempt - 1))
        delays = {conflict_delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # not the same moment for everyone
