"""
The supervisor and the local backend, through the API, with real engines:
lifecycles, stop and kill of real processes, pause that really stops the
tree, kill that leaves nothing, WAITING round trips, and monitoring of real
process trees.

What is a matter of time and bookkeeping (dispatch limits, a held job, the
grace before a kill, input timeouts, walltime and memory limits, restarts)
is proven by the Clock-driven tests in test_supervisor_clock.py.
"""

import json
import time

import psutil
import pytest

from live import LiveKree, job_processes, submit, wait_for_state
from waiting import holds_for, wait_for

CONFIG = """
[supervisor]
max_running = 2
stop_grace_seconds = 2
monitor_interval_seconds = 0.2
"""
TERMINAL = ("FINISHED", "FAILED", "ABORTED")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LiveKree(tmp_path_factory.mktemp("supervisor"), frontends=("portal", "other"),
                      config_text=CONFIG).start()
    yield server
    assert server.stop() == 0, server.log


@pytest.fixture
def portal(server):
    client = server.client("portal")
    yield client
    # Leave no engine running for the next test.
    for job in client.get("/v1/jobs?limit=500").json["jobs"]:
        if job["state"] not in TERMINAL + ("NEW",):
            client.post(f"/v1/jobs/{job['id']}/kill")


def messages(client, job_id):
    return [m["text"] for m in client.get(f"/v1/jobs/{job_id}/messages?limit=500").json["messages"]]


def events(client, job_id):
    return client.get(f"/v1/jobs/{job_id}/events?limit=500").json["events"]


def state_path(client, job_id):
    return [(e["data"]["from"], e["data"]["to"]) for e in events(client, job_id)
            if e["type"] == "job.state"]


def test_a_job_runs_to_finished_with_messages_and_results(portal):
    job = submit(portal, "products.xml")
    state = wait_for_state(portal, job["id"], TERMINAL)
    assert state["state"] == "FINISHED", state
    assert state["exit_code"] == 0 and state["progress"] == 1.0
    assert state["started"] and state["ended"] and state["running_seconds"] > 0
    assert state_path(portal, job["id"]) == [
        ("NEW", "QUEUED"), ("QUEUED", "RUNNING"), ("RUNNING", "FINISHED")]
    results = portal.get(f"/v1/jobs/{job['id']}/results").json
    assert results["complete"] is True
    assert {p["name"] for p in results["products"]} == {"numbers.txt", "squares.csv", "summary.txt"}
    assert portal.get(f"/v1/jobs/{job['id']}/products/summary.txt").body.endswith(b"45")
    kinds = [e["type"] for e in events(portal, job["id"])]
    assert kinds.count("job.product") == 3 and "job.progress" in kinds
    seqs = [e["seq"] for e in events(portal, job["id"])]
    assert seqs == list(range(1, len(seqs) + 1))


def test_display_output_becomes_messages(portal):
    job = submit(portal, "arithmetic.xml")
    assert wait_for_state(portal, job["id"], TERMINAL)["state"] == "FINISHED"
    assert messages(portal, job["id"]) == ["11", "25", "44", "70", "105"]
    sources = {m["source"] for m in
               portal.get(f"/v1/jobs/{job['id']}/messages").json["messages"]}
    assert sources == {".arithmetic.Display"}


def test_a_failing_workflow_ends_failed_with_its_reason(portal):
    job = submit(portal, "fail.xml")
    state = wait_for_state(portal, job["id"], TERMINAL)
    assert state["state"] == "FAILED" and state["exit_code"] == 1
    assert "counter reached its limit" in state["error"]


def test_an_invalid_workflow_is_refused_at_creation_with_the_engine_problems(portal):
    data = b'<entity name="m"><entity name="X" class="org.example.Nope"/></entity>'
    uri = portal.post("/v1/workflows", body=data,
                      headers={"Content-Type": "application/xml"}).json["uri"]
    reply = portal.post("/v1/jobs", {"workflow": uri, "queue": True})
    assert reply.status == 422 and reply.error == "invalid_workflow"
    assert any("org.example.Nope" in p for p in reply.json["error"]["details"]["problems"])


def test_unknown_parameter_names_are_refused_and_defaults_shown(portal):
    job = submit(portal, "arithmetic.xml", queue=False)
    defaults = portal.get(f"/v1/jobs/{job['id']}/parameters").json["defaults"]
    assert defaults[".arithmetic.offset"] == "10"
    assert defaults[".arithmetic.SDF Director.iterations"] == "5"
    reply = portal.patch(f"/v1/jobs/{job['id']}/parameters", {".arithmetic.nope": 1})
    assert reply.status == 422 and reply.error == "invalid_parameter"
    uri = job["workflow"]
    reply = portal.post("/v1/jobs", {"workflow": uri, "parameters": {".arithmetic.Ramp.nope": 1}})
    assert reply.status == 422 and reply.json["error"]["details"]["unknown"] == [
        ".arithmetic.Ramp.nope"]


def test_unfetchable_workflows_are_refused_at_creation(portal):
    reply = portal.post("/v1/jobs", {"workflow": "https://no-such-host.invalid/wf.xml"})
    assert reply.status == 422 and reply.error == "uri_not_allowed"


def test_stop_is_graceful_and_kill_is_not(portal):
    stopped = submit(portal, "sleep-loop.xml", parameters={".sleeper.period": 100})
    killed = submit(portal, "sleep-loop.xml", parameters={".sleeper.period": 100})
    for job in (stopped, killed):
        wait_for_state(portal, job["id"], "RUNNING")
    # Both engines are under way once each has written its first event line.
    files = [portal.server.state_dir / "jobs" / job["id"] / "events.jsonl"
             for job in (stopped, killed)]
    wait_for(lambda: all(f.exists() and f.read_bytes().count(b"\n") >= 1 for f in files),
             "both engines' first event lines")
    assert portal.post(f"/v1/jobs/{stopped['id']}/stop").json["state"] == "ABORTED"
    assert portal.post(f"/v1/jobs/{killed['id']}/kill").json["state"] == "ABORTED"
    wait_for(lambda: not job_processes(stopped["id"]) and not job_processes(killed["id"]),
             "no process left of either job")
    # The stopped engine finished its firing and said so; the killed one could not.
    stopped_log = (portal.server.state_dir / "jobs" / stopped["id"] / "events.jsonl").read_text()
    assert json.loads(stopped_log.splitlines()[-1])["state"] == "stopped"
    killed_log = (portal.server.state_dir / "jobs" / killed["id"] / "events.jsonl").read_text()
    assert json.loads(killed_log.splitlines()[-1])["type"] != "end"
    for job in (stopped, killed):
        assert portal.get(f"/v1/jobs/{job['id']}/state").json["state"] == "ABORTED"


def test_pause_really_stops_the_tree_and_resume_continues(portal):
    job = submit(portal, "sleep-loop.xml", parameters={
        ".sleeper.period": 50, ".sleeper.SDF Director.iterations": 60})
    wait_for_state(portal, job["id"], "RUNNING")
    wait_for(lambda: messages(portal, job["id"]), "a first message")
    paused = portal.post(f"/v1/jobs/{job['id']}/pause").json
    assert paused["state"] == "PAUSED" and paused["paused_from"] == "RUNNING"
    paused_at = time.monotonic()

    def all_stopped():
        processes = job_processes(job["id"])
        if processes and all(p.status() == psutil.STATUS_STOPPED for p in processes):
            return processes
        return None

    processes = wait_for(all_stopped, "every process of the job stopped")
    cpu = [sum(p.cpu_times()[:2]) for p in processes]
    count = len(messages(portal, job["id"]))
    holds_for(lambda: [sum(p.cpu_times()[:2]) for p in processes] == cpu
              and len(messages(portal, job["id"])) == count,
              "no CPU time and no message while paused", duration=1.0)
    assert portal.post(f"/v1/jobs/{job['id']}/resume").json["state"] == "RUNNING"
    state = wait_for_state(portal, job["id"], TERMINAL)
    assert state["state"] == "FINISHED"
    assert messages(portal, job["id"]) == [str(i) for i in range(60)]
    assert state["running_seconds"] < (time.monotonic() - paused_at) + 10


def test_waiting_answered_through_the_api(portal):
    job = submit(portal, "ask-input.xml")
    wait_for_state(portal, job["id"], "WAITING")
    prompt = portal.get(f"/v1/jobs/{job['id']}/input").json["prompt"]
    assert [f["name"] for f in prompt["prompt"]["fields"]] == ["name", "count"]
    refused = portal.post(f"/v1/jobs/{job['id']}/input", {"name": "Ada", "count": "two"})
    assert refused.status == 422 and refused.error == "invalid_answer"
    reply = portal.post(f"/v1/jobs/{job['id']}/input", {"answers": {"name": "Ada", "count": 2}})
    assert reply.status == 200 and reply.json["state"] == "RUNNING"
    assert wait_for_state(portal, job["id"], TERMINAL)["state"] == "FINISHED"
    assert messages(portal, job["id"]) == ["Hello Ada x2"]
    assert portal.post(f"/v1/jobs/{job['id']}/input", {"name": "x"}).error == "not_waiting"


def test_pause_and_resume_while_waiting(portal):
    job = submit(portal, "ask-input.xml")
    wait_for_state(portal, job["id"], "WAITING")
    paused = portal.post(f"/v1/jobs/{job['id']}/pause").json
    assert paused["paused_from"] == "WAITING"
    assert portal.post(f"/v1/jobs/{job['id']}/input", {"name": "x"}).error == "not_waiting"
    assert portal.post(f"/v1/jobs/{job['id']}/resume").json["state"] == "WAITING"
    portal.post(f"/v1/jobs/{job['id']}/input", {"name": "Lin"})
    assert wait_for_state(portal, job["id"], TERMINAL)["state"] == "FINISHED"
    assert messages(portal, job["id"]) == ["Hello Lin x1"]


def test_monitoring_reports_cpu_and_memory(portal):
    job = submit(portal, "sleep-loop.xml", parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    def sampled():
        state = portal.get(f"/v1/jobs/{job['id']}/state").json
        return state if state["peak_memory_bytes"] and state["cpu_seconds"] is not None else None

    state = wait_for(sampled, "a first sample of the job")
    assert state["peak_memory_bytes"] > 5 * 1024 * 1024
    assert state["cpu_seconds"] >= 0
    portal.post(f"/v1/jobs/{job['id']}/kill")


def test_delete_of_a_stopped_job_waits_for_its_engine(portal, server):
    job = submit(portal, "sleep-loop.xml", parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    portal.post(f"/v1/jobs/{job['id']}/stop")
    assert portal.delete(f"/v1/jobs/{job['id']}").status == 204
    assert not (server.state_dir / "jobs" / job["id"]).exists()
    assert not job_processes(job["id"])


def test_kill_leaves_no_process_even_one_that_escaped(portal, server):
    server.admin_policy = None
    escape = (
        '<?xml version="1.0"?><entity name="escape" class="ptolemy.actor.TypedCompositeActor">'
        '<property name="SDF Director" class="ptolemy.domains.sdf.kernel.SDFDirector">'
        '<property name="iterations" value="1"/></property>'
        '<entity name="Run" class="org.sdm.spa.ExternalExecution">'
        '<property name="command" value="{&quot;sh&quot;, &quot;-c&quot;, '
        '&quot;setsid sleep 300 &amp; sleep 300 &amp; wait&quot;}"/></entity>'
        "</entity>").encode()
    import sqlalchemy as sa

    from kree.store.engine import create_engine
    engine = create_engine(server.config.store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM actor_policies WHERE actor_class = :c"),
                     {"c": "org.sdm.spa.ExternalExecution"})
        conn.execute(sa.text("INSERT INTO actor_policies VALUES (:c, 'allow', '2026-01-01')"),
                     {"c": "org.sdm.spa.ExternalExecution"})
    engine.dispose()
    uri = portal.post("/v1/workflows", body=escape,
                      headers={"Content-Type": "application/xml"}).json["uri"]
    job = portal.post("/v1/jobs", {"workflow": uri, "queue": True}).json
    wait_for_state(portal, job["id"], "RUNNING")
    wait_for(lambda: len(job_processes(job["id"])) >= 4, "the engine, sh and both sleeps")
    processes = job_processes(job["id"])
    sessions = {p.pid: __import__("os").getsid(p.pid) for p in processes}
    assert len(set(sessions.values())) >= 2, "the escaped sleep should be in a session of its own"
    portal.post(f"/v1/jobs/{job['id']}/kill")
    wait_for(lambda: not [p for p in processes if p.is_running()
                          and p.status() != psutil.STATUS_ZOMBIE], "every process gone")
