"""
The store on real SQLite files and on the real PostgreSQL server (each test
runs on both; see the store_url fixture).
"""

import datetime
import threading

import pytest
import pytest_twisted
import sqlalchemy as sa

from kree.errors import Conflict, FrontendNotFound, InvalidTransition, JobNotFound
from kree.ids import new_job_id
from kree.states import Action, JobState
from kree.store.subscriptions import SubscriptionNotFound

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def make_job(store, frontend, **kwargs):
    job_id = kwargs.pop("job_id", None) or new_job_id()
    job, _ = store.pool.run_in_thread(
        store.jobs.create_thd,
        job_id=job_id,
        frontend_id=frontend.id,
        workflow_uri=kwargs.pop("workflow_uri", "kree:workflow/" + "0" * 64),
        job_dir=f"/jobs/{job_id}",
        **kwargs,
    )
    return job


def transition(store, job_id, action, **kwargs):
    return store.pool.run_in_thread(store.jobs.transition_thd, job_id, action, **kwargs)


def events_of(store, job_id):
    return store.pool.run_in_thread(store.events.list_for_job_thd, job_id, 0, 10_000)


@pytest_twisted.ensureDeferred
async def test_create_job_with_parameters_and_event(store, frontend):
    job, event = await store.jobs.create(
        job_id=new_job_id(),
        frontend_id=frontend.id,
        workflow_uri="https://example.org/wf.xml",
        job_dir="/jobs/x",
        user="alice",
        parameters={".model.Ramp.step": 2, ".model.Const.value": "hello"},
        resources={"cpus": 2},
        now=T0,
    )
    assert job.state is JobState.NEW
    assert job.user == "alice"
    assert job.created_at == T0 and job.created_at.tzinfo is not None
    assert job.resources == {"cpus": 2}
    assert job.last_seq == 1
    assert (event.seq, event.type) == (1, "job.created")
    assert event.data == {"state": "NEW", "workflow": "https://example.org/wf.xml", "user": "alice"}
    assert await store.jobs.get_parameters(job.id) == {
        ".model.Const.value": "hello",
        ".model.Ramp.step": 2,
    }
    again = await store.jobs.get(job.id, frontend.id)
    assert again == job


@pytest_twisted.ensureDeferred
async def test_transition_writes_state_times_and_event(store, frontend):
    job = make_job(store, frontend, now=at(0))
    job, event = await store.jobs.transition(job.id, Action.QUEUE, reason="by frontend", now=at(1))
    assert job.state is JobState.QUEUED and job.queued_at == at(1)
    assert event.type == "job.state"
    assert event.data == {"from": "NEW", "to": "QUEUED", "action": "queue",
                          "reason": "by frontend"}
    job, _ = await store.jobs.transition(job.id, Action.DISPATCH, now=at(2))
    assert job.started_at == at(2) and job.running_since == at(2)
    job, event = await store.jobs.transition(job.id, Action.PAUSE, now=at(12))
    assert job.state is JobState.PAUSED and job.paused_from is JobState.RUNNING
    assert event.data["resumes_to"] == "RUNNING"
    assert job.running_seconds == 10 and job.running_since is None
    # Paused time does not count as running time.
    assert job.running_time(at(100)) == 10
    job, _ = await store.jobs.transition(job.id, Action.RESUME, now=at(50))
    assert job.state is JobState.RUNNING and job.paused_from is None
    assert job.running_time(at(55)) == 15
    job, event = await store.jobs.transition(
        job.id, Action.FINISH, updates={"exit_code": 0, "progress": 1.0}, now=at(60)
    )
    assert job.state is JobState.FINISHED and job.ended_at == at(60)
    assert job.exit_code == 0 and job.progress == 1.0
    assert job.running_seconds == 20 and job.running_time(at(1000)) == 20
    assert [e.seq for e in await store.events.list_for_job(job.id)] == [1, 2, 3, 4, 5, 6]


@pytest_twisted.ensureDeferred
async def test_illegal_transition_writes_nothing(store, frontend):
    job = make_job(store, frontend)
    with pytest.raises(InvalidTransition) as info:
        await store.jobs.transition(job.id, Action.FINISH)
    assert info.value.details["state"] == "NEW"
    assert info.value.details["allowed"] == ["queue", "stop", "kill"]
    after = await store.jobs.get(job.id)
    assert after.state is JobState.NEW and after.last_seq == 1
    assert len(await store.events.list_for_job(job.id)) == 1


@pytest_twisted.ensureDeferred
async def test_transition_refuses_unknown_fields_and_jobs(store, frontend):
    job = make_job(store, frontend)
    with pytest.raises(ValueError, match="cannot set"):
        await store.jobs.transition(job.id, Action.QUEUE, updates={"state": "FINISHED"})
    with pytest.raises(JobNotFound):
        await store.jobs.transition("nosuchjob", Action.QUEUE)


@pytest_twisted.ensureDeferred
async def test_jobs_are_isolated_by_frontend(store, frontend, other_frontend):
    job = make_job(store, frontend)
    with pytest.raises(JobNotFound):
        await store.jobs.get(job.id, other_frontend.id)
    with pytest.raises(JobNotFound):
        await store.jobs.transition(job.id, Action.QUEUE, frontend_id=other_frontend.id)
    assert await store.jobs.list(frontend_id=other_frontend.id) == []
    assert (await store.jobs.get(job.id)).state is JobState.NEW


def _race(store, calls):
    """Run the calls at the same moment on their own threads; their outcomes."""
    barrier = threading.Barrier(len(calls))
    outcomes = [None] * len(calls)

    def run(i, fn, args, kwargs):
        barrier.wait()
        try:
            outcomes[i] = store.pool.run_in_thread(fn, *args, **kwargs)
        except Exception as e:
            outcomes[i] = e

    threads = [
        threading.Thread(target=run, args=(i, fn, args, kwargs))
        for i, (fn, args, kwargs) in enumerate(calls)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


@pytest.mark.parametrize(
    "first, second",
    [(Action.DISPATCH, Action.DISPATCH), (Action.FINISH, Action.FAIL),
     (Action.PAUSE, Action.PAUSE), (Action.KILL, Action.FINISH)],
)
def test_concurrent_transitions_exactly_one_wins(store, frontend, first, second):
    for _ in range(10):
        job = make_job(store, frontend)
        transition(store, job.id, Action.QUEUE)
        if first is not Action.DISPATCH:
            transition(store, job.id, Action.DISPATCH)
        outcomes = _race(
            store,
            [(store.jobs.transition_thd, (job.id, first), {}),
             (store.jobs.transition_thd, (job.id, second), {})],
        )
        wins = [o for o in outcomes if isinstance(o, tuple)]
        losses = [o for o in outcomes if isinstance(o, InvalidTransition)]
        assert len(wins) == 1 and len(losses) == 1, outcomes
        winner_job, winner_event = wins[0]
        final = store.pool.run_in_thread(store.jobs.get_thd, job.id)
        assert final.state is winner_job.state
        seqs = [e.seq for e in events_of(store, job.id)]
        assert seqs == list(range(1, len(seqs) + 1))
        assert seqs[-1] == winner_event.seq == final.last_seq


def test_event_seq_has_no_gaps_under_concurrency(store, frontend):
    job = make_job(store, frontend)
    transition(store, job.id, Action.QUEUE)
    transition(store, job.id, Action.DISPATCH)
    writers, per_writer = 4, 25

    def writer(n):
        for i in range(per_writer):
            store.pool.run_in_thread(store.jobs.add_message_thd, job.id, f"writer {n} message {i}")
            # Transitions interleave with messages; half of them lose the race.
            try:
                action = Action.PAUSE if i % 2 else Action.RESUME
                store.pool.run_in_thread(store.jobs.transition_thd, job.id, action)
            except InvalidTransition:
                pass

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    events = events_of(store, job.id)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert sum(e.type == "job.message" for e in events) == writers * per_writer
    final = store.pool.run_in_thread(store.jobs.get_thd, job.id)
    assert final.last_seq == len(events)
    # Every state event chains from the previous one: nothing was lost.
    state = "NEW"
    for e in events:
        if e.type == "job.state":
            assert e.data["from"] == state
            state = e.data["to"]
    assert state == final.state.value


@pytest_twisted.ensureDeferred
async def test_messages_are_recorded_with_events(store, frontend):
    job = make_job(store, frontend)
    first, event = await store.jobs.add_message(job.id, "42", source=".model.Display")
    second, _ = await store.jobs.add_message(job.id, "disk low", level="warning")
    assert event.type == "job.message"
    assert event.data == {"id": first.id, "level": "info", "source": ".model.Display", "text": "42"}
    assert [m.text for m in await store.jobs.list_messages(job.id)] == ["42", "disk low"]
    assert [m.text for m in await store.jobs.list_messages(job.id, after=first.id)] == ["disk low"]
    with pytest.raises(JobNotFound):
        await store.jobs.add_message("nosuchjob", "x")


@pytest_twisted.ensureDeferred
async def test_remove_keeps_the_events(store, frontend):
    """The primitive under JobService.delete (which decides who may go: test_jobs)."""
    job = make_job(store, frontend, parameters={".m.a.p": 1})
    await store.jobs.add_message(job.id, "hello")
    await store.jobs.transition(job.id, Action.QUEUE)
    await store.jobs.transition(job.id, Action.STOP)
    event = await store.pool.run(
        lambda conn: store.jobs.remove_thd(conn, store.jobs.get_thd(conn, job.id, lock=True)))
    assert (event.type, event.seq, event.data) == ("job.deleted", 5, {"state": "ABORTED"})
    with pytest.raises(JobNotFound):
        await store.jobs.get(job.id)
    assert await store.jobs.get_parameters(job.id) == {}
    assert await store.jobs.list_messages(job.id) == []
    assert [e.type for e in await store.events.list_for_job(job.id)] == [
        "job.created", "job.message", "job.state", "job.state", "job.deleted"]


@pytest_twisted.ensureDeferred
async def test_list_filters_and_cursor_pagination(store, frontend, other_frontend):
    ids = []
    for i in range(7):
        job = make_job(store, frontend, user="alice" if i % 2 else "bob", now=at(i))
        ids.append(job.id)
    make_job(store, other_frontend)
    transition(store, ids[0], Action.QUEUE)
    newest_first = list(reversed(ids))
    page1 = await store.jobs.list(frontend_id=frontend.id, limit=3)
    page2 = await store.jobs.list(frontend_id=frontend.id, limit=3, after=page1[-1].id)
    page3 = await store.jobs.list(frontend_id=frontend.id, limit=3, after=page2[-1].id)
    assert [j.id for j in page1 + page2 + page3] == newest_first
    alice = await store.jobs.list(frontend_id=frontend.id, user="alice")
    assert {j.id for j in alice} == {ids[1], ids[3], ids[5]}
    queued = await store.jobs.list(frontend_id=frontend.id, state=JobState.QUEUED)
    assert [j.id for j in queued] == [ids[0]]
    recent = await store.jobs.list(frontend_id=frontend.id, created_after=at(4))
    assert {j.id for j in recent} == {ids[5], ids[6]}
    assert await store.jobs.count_by_state() == {"NEW": 7, "QUEUED": 1}


@pytest_twisted.ensureDeferred
async def test_frontends(store):
    added = await store.frontends.add("portal", "AB:" * 31 + "AB", "CN=portal")
    assert added.fingerprint == "ab" * 32 and not added.revoked
    assert await store.frontends.by_fingerprint("ab" * 32) == added
    assert await store.frontends.by_fingerprint("ef" * 32) is None
    with pytest.raises(Conflict):
        await store.frontends.add("portal", "cd" * 32)
    with pytest.raises(Conflict):
        await store.frontends.add("other", "ab" * 32)
    revoked = await store.frontends.revoke("portal")
    assert revoked.revoked and (await store.frontends.by_fingerprint("ab" * 32)).revoked
    assert [f.name for f in await store.frontends.list()] == ["portal"]
    with pytest.raises(FrontendNotFound):
        await store.frontends.revoke("nobody")


@pytest_twisted.ensureDeferred
async def test_subscriptions(store, frontend, other_frontend):
    sub = await store.subscriptions.add(
        subscription_id="sub_1", frontend_id=frontend.id, url="https://listener.example/hook",
        secret="s3cret", event_types=["job.state"],
    )
    assert sub.status == "active" and sub.event_types == ["job.state"] and sub.job_id is None
    assert await store.subscriptions.list(frontend.id) == [sub]
    assert await store.subscriptions.list(other_frontend.id) == []
    with pytest.raises(SubscriptionNotFound):
        await store.subscriptions.get("sub_1", other_frontend.id)
    await store.subscriptions.delete("sub_1", frontend.id)
    with pytest.raises(SubscriptionNotFound):
        await store.subscriptions.delete("sub_1", frontend.id)


@pytest_twisted.ensureDeferred
async def test_cache_entries(store):
    uri = "https://example.org/wf.xml"
    assert await store.cache.get(uri) is None
    first = await store.cache.record_fetch(uri, sha256="a" * 64, size=10, etag='"v1"')
    assert (first.sha256, first.etag) == ("a" * 64, '"v1"')
    second = await store.cache.record_fetch(uri, sha256="b" * 64, size=11, last_modified="x")
    assert (second.sha256, second.etag, second.last_modified) == ("b" * 64, None, "x")
    revalidated = await store.cache.record_revalidated(uri)
    assert revalidated.sha256 == "b" * 64 and revalidated.checked_at >= second.checked_at
    assert [e.uri for e in await store.cache.list()] == [uri]
    assert await store.cache.purge(uri) == 1
    assert await store.cache.purge() == 0


@pytest_twisted.ensureDeferred
async def test_audit_log(store, frontend):
    await store.audit.record(actor="portal", frontend_id=frontend.id, user="alice",
                             action="job.create", job_id="j1", outcome="ok", status=201)
    await store.audit.record(actor="admin", action="frontend.revoke", outcome="ok",
                             details={"frontend": "portal"})
    records = await store.audit.list()
    assert [r.action for r in records] == ["frontend.revoke", "job.create"]
    assert records[1].user == "alice" and records[1].status == 201
    assert [r.action for r in await store.audit.list(job_id="j1")] == ["job.create"]


def test_sqlite_pragmas(sqlite_url):
    from kree.store.engine import create_engine

    for synchronous, expected in (("full", 2), ("normal", 1)):
        engine = create_engine(sqlite_url, sqlite_synchronous=synchronous)
        with engine.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == expected
        engine.dispose()
    with pytest.raises(ValueError):
        create_engine(sqlite_url, sqlite_synchronous="off")


def test_naive_datetimes_are_refused(store, frontend):
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        make_job(store, frontend, now=datetime.datetime(2026, 1, 1))


def test_job_lists_are_served_by_an_index(store, frontend):
    """Cursor pages stay cheap as the table grows: no full scan, no sort."""
    from kree.store import model

    for _ in range(3):
        make_job(store, frontend)
    jobs = model.jobs
    queries = {
        "ix_jobs_frontend_id": sa.select(jobs).where(jobs.c.frontend_id == frontend.id,
                                                     jobs.c.id < "zzz")
        .order_by(jobs.c.id.desc()).limit(50),
        "ix_jobs_frontend_state": sa.select(jobs).where(jobs.c.frontend_id == frontend.id,
                                                        jobs.c.state == "QUEUED")
        .order_by(jobs.c.id.desc()).limit(50),
    }

    def plans(conn):
        dialect = conn.dialect.name
        out = {}
        for index, query in queries.items():
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            if dialect == "sqlite":
                rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
                out[index] = " ".join(str(r[-1]) for r in rows)
            else:
                conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                rows = conn.exec_driver_sql(f"EXPLAIN {sql}").all()
                out[index] = " ".join(r[0] for r in rows)
        return out

    for index, plan in store.pool.run_in_thread(plans).items():
        assert index in plan, plan
        assert "TEMP B-TREE" not in plan and "Sort " not in plan, plan


@pytest_twisted.ensureDeferred
async def test_actor_policy_and_software_registry(store):
    assert await store.policies.all() == {}
    await store.policies.set("org.sdm.spa.ExternalExecution", "allow")
    await store.policies.set("ptolemy.actor.lib.gui.Display", "replace:ptolemy.actor.lib.Discard")
    await store.policies.set("org.sdm.spa.ExternalExecution", "remove")
    assert await store.policies.all() == {
        "org.sdm.spa.ExternalExecution": "remove",
        "ptolemy.actor.lib.gui.Display": "replace:ptolemy.actor.lib.Discard"}
    await store.policies.record_software({"R": {"path": "/usr/bin/Rscript", "version": "4.2.2"},
                                          "Matlab": None})
    assert await store.policies.software() == {
        "Matlab": None, "R": {"path": "/usr/bin/Rscript", "version": "4.2.2"}}
    await store.policies.record_software({"Python": {"path": "/usr/bin/python3", "version": "3"}})
    assert list(await store.policies.software()) == ["Python"]


def test_ended_jobs_with_an_engine_to_find(store, frontend):
    """Recovery's query: terminal jobs whose record still names an engine."""
    running, ended, gone = (make_job(store, frontend).id for _ in range(3))
    for job_id in (running, ended, gone):
        transition(store, job_id, Action.QUEUE, now=T0)
        transition(store, job_id, Action.DISPATCH, now=at(1))
        store.pool.run_in_thread(store.jobs.update_runtime_thd, job_id,
                                 backend_ref={"pid": 1, "start_time": 2.0})
    for job_id in (ended, gone):
        transition(store, job_id, Action.FAIL, reason="walltime", now=at(2))
    # Its engine was seen to go: the reference becomes SQL NULL, not JSON null.
    store.pool.run_in_thread(store.jobs.update_runtime_thd, gone, backend_ref=None)
    assert store.pool.run_in_thread(store.jobs.ended_with_engine_ids_thd) == [(ended, "FAILED")]
    assert store.pool.run_in_thread(store.jobs.get_thd, gone).backend_ref is None
    with store.engine.connect() as conn:
        nulls = conn.execute(sa.text("SELECT id FROM jobs WHERE backend_ref IS NULL")).scalars()
        assert set(nulls) == {gone}
