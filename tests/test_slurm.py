"""
The Slurm backend through the frontend API, on the real single-node Slurm
cluster (tests/slurm_cluster.py): jobs FINISHED with products and FAILED,
pending in Slurm while QUEUED, pause and resume (Slurm shows S, then R),
stop, kill, a WAITING prompt answered by file, the walltime, a job that Slurm
itself ends for its time limit or that someone cancels behind KREE's back,
and kree-admin status.

The first test submits a job that only Slurm's one-minute time limit ends;
it occupies one of the node's two CPUs while the other tests run, and the
last test collects its verdict.
"""

import json
import subprocess
import time

import pytest

from kree.backends import slurm
from kree.backends.slurm import SlurmConfig
from kree.records import Job
from live import LiveKree, kill_active_jobs, submit, wait_for_state
from slurm_cluster import SLURM_CONFIG, require_slurm, show_job, slurm_job, slurm_jobs
from waiting import holds_for, wait_for

TERMINAL = ("FINISHED", "FAILED", "ABORTED")
ON_SLURM = {"backend": "slurm"}
# Every job of this server gets Slurm's shortest time limit; only the
# time-limit test's job lives long enough to reach it.
CONFIG = SLURM_CONFIG + 'sbatch_args = ["--time=1"]\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_slurm()
    server = LiveKree(tmp_path_factory.mktemp("slurm"), frontends=("portal",),
                      config_text=CONFIG).start()
    yield server
    kill_active_jobs(server.client("portal"))
    assert server.stop() == 0, server.log


@pytest.fixture(scope="module")
def portal(server):
    return server.client("portal")


@pytest.fixture(scope="module")
def over_time(portal):
    """A job that runs until Slurm's time limit (one minute) ends it."""
    job = submit(portal, "sleep-loop.xml", resources=ON_SLURM, parameters={
        ".sleeper.period": 1000, ".sleeper.SDF Director.iterations": 10_000})
    wait_for_state(portal, job["id"], "RUNNING")
    job["submitted"] = time.monotonic()
    return job


def messages(client, job_id):
    """The engine's messages (not Slurm's notes on why a job is pending)."""
    return [m["text"] for m in client.get(f"/v1/jobs/{job_id}/messages?limit=500").json["messages"]
            if m["source"] != "slurm"]


def written_messages(client, job_id) -> int:
    """How many messages the engine has written to its events file so far."""
    path = client.server.state_dir / "jobs" / job_id / "events.jsonl"
    text = path.read_text() if path.exists() else ""
    complete = text[:text.rfind("\n") + 1]  # not a line still being written
    return sum(1 for line in complete.splitlines() if json.loads(line)["type"] == "message")


def events(client, job_id):
    return client.get(f"/v1/jobs/{job_id}/events?limit=500").json["events"]


def state_path(client, job_id):
    return [(e["data"]["from"], e["data"]["to"]) for e in events(client, job_id)
            if e["type"] == "job.state"]


def wait_for_slurm(kree_job_id, states, timeout=90):
    """The Slurm job's (id, state, reason) once its state is one of C{states}."""
    def reached():
        rows = slurm_jobs(kree_job_id)
        assert len(rows) <= 1, rows
        return rows[0] if rows and rows[0][1] in states else None

    return wait_for(reached, f"the Slurm job of {kree_job_id} in {states}", timeout=timeout,
                    interval=0.1)


def test_the_server_offers_slurm(portal, over_time):
    assert portal.get("/v1/service-info").json["backends"] == ["local", "slurm"]
    assert portal.get("/v1/capabilities").json["backends"] == ["local", "slurm"]


def test_a_job_finishes_on_slurm_with_its_products(portal, server):
    job = submit(portal, "products.xml", resources=ON_SLURM)
    state = wait_for_state(portal, job["id"], TERMINAL)
    assert state["state"] == "FINISHED" and state["exit_code"] == 0, state
    path = state_path(portal, job["id"])
    assert path == [("NEW", "QUEUED"), ("QUEUED", "RUNNING"), ("RUNNING", "FINISHED")]
    started = [e for e in events(portal, job["id"]) if e["type"] == "job.state"][1]
    assert started["data"]["reason"].startswith("started by Slurm as job ")
    slurm_id, slurm_state, _ = slurm_job(job["id"])
    assert slurm_state == "COMPLETED"
    assert show_job(slurm_id)["WorkDir"] == str(server.state_dir / "jobs" / job["id"])
    results = portal.get(f"/v1/jobs/{job['id']}/results").json
    assert {p["name"] for p in results["products"]} == {"numbers.txt", "squares.csv",
                                                         "summary.txt"}
    assert portal.get(f"/v1/jobs/{job['id']}/products/summary.txt").body.endswith(b"45")
    seqs = [e["seq"] for e in events(portal, job["id"])]
    assert seqs == list(range(1, len(seqs) + 1))


def test_resources_put_while_new_move_a_job_to_slurm(portal):
    job = submit(portal, "hello.xml", queue=False)
    reply = portal.put(f"/v1/jobs/{job['id']}/resources", {"backend": "slurm"})
    assert reply.status == 200 and reply.json["resources"] == {"backend": "slurm"}
    portal.post(f"/v1/jobs/{job['id']}/queue")
    assert wait_for_state(portal, job["id"], TERMINAL)["state"] == "FINISHED"
    assert slurm_job(job["id"])[1] == "COMPLETED"
    assert messages(portal, job["id"]) == ["Hello, world"]
    local = submit(portal, "hello.xml")  # the default backend is still local
    assert wait_for_state(portal, local["id"], TERMINAL)["state"] == "FINISHED"
    assert slurm_jobs(local["id"]) == []


def test_a_failing_workflow_fails_on_slurm_with_its_reason(portal):
    job = submit(portal, "fail.xml", resources=ON_SLURM)
    state = wait_for_state(portal, job["id"], TERMINAL)
    assert state["state"] == "FAILED" and state["exit_code"] == 1
    assert "counter reached its limit" in state["error"]
    assert wait_for_slurm(job["id"], {"FAILED"})[1] == "FAILED"


def test_resources_become_sbatch_options(portal):
    job = submit(portal, "sleep-loop.xml", resources={
        "backend": "slurm", "cpus": 1, "memory": "100M", "walltime": 3600,
        "partition": "debug"}, parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    fields = show_job(slurm_job(job["id"])[0])
    # [backends.slurm] sbatch_args (--time=1 here) come after the job's own options.
    assert fields["Partition"] == "debug" and fields["TimeLimit"] == "00:01:00"
    assert fields["NumCPUs"] == "1" and fields["MinMemoryNode"] == "100M"
    assert fields["JobName"] == f"kree-{job['id']}" and fields["Requeue"] == "0"
    portal.post(f"/v1/jobs/{job['id']}/kill")
    wait_for_state(portal, job["id"], TERMINAL)


def test_feasibility_asks_slurm(portal):
    hello = submit(portal, "hello.xml", queue=False)["workflow"]
    answer = portal.post("/v1/feasibility", {"workflow": hello, "resources": ON_SLURM}).json
    assert answer["feasible"] and answer["backend"] == "slurm", answer
    assert answer["estimated_start"].startswith("20")  # sbatch --test-only's answer
    assert answer["free_slots"] > 0
    answer = portal.post("/v1/feasibility", {"workflow": hello,
                                             "resources": {**ON_SLURM, "cpus": 64}}).json
    assert not answer["feasible"] and answer["estimated_start"] is None
    (reason,) = answer["reasons"]
    assert reason.startswith("backend slurm: ")
    assert "Requested node configuration is not available" in reason
    answer = portal.post("/v1/feasibility", {"workflow": hello, "resources": {
        **ON_SLURM, "partition": "nowhere"}}).json
    assert not answer["feasible"]
    assert "invalid partition" in answer["reasons"][0].lower(), answer


def test_a_job_that_cannot_start_says_why_it_waits(portal):
    job = submit(portal, "hello.xml", resources={**ON_SLURM, "cpus": 64})
    def why_pending():
        notes = [m for m in portal.get(f"/v1/jobs/{job['id']}/messages").json["messages"]
                 if m["source"] == "slurm"]
        if any("PartitionConfig" in m["text"] or "partition's limits" in m["text"]
               for m in notes):
            return notes
        return None

    notes = wait_for(why_pending, "Slurm's reason in the job's messages", interval=0.1)
    assert notes[-1]["text"].startswith("pending in Slurm as job ")
    assert "partition's limits do not allow these resources" in notes[-1]["text"], notes
    assert portal.get(f"/v1/jobs/{job['id']}/state").json["state"] == "QUEUED"
    assert portal.post(f"/v1/jobs/{job['id']}/stop").json["state"] == "ABORTED"
    assert wait_for_slurm(job["id"], {"CANCELLED"})[1] == "CANCELLED"


def test_pause_suspends_in_slurm_and_resume_continues(portal):
    job = submit(portal, "sleep-loop.xml", resources=ON_SLURM, parameters={
        ".sleeper.period": 50, ".sleeper.SDF Director.iterations": 60})
    wait_for_state(portal, job["id"], "RUNNING")
    wait_for(lambda: messages(portal, job["id"]), "a first message")
    paused = portal.post(f"/v1/jobs/{job['id']}/pause").json
    assert paused["state"] == "PAUSED" and paused["paused_from"] == "RUNNING"
    wait_for_slurm(job["id"], {"SUSPENDED"})
    # What the engine wrote before it stopped has been read ...
    wait_for(lambda: len(messages(portal, job["id"])) == written_messages(portal, job["id"]),
             "every message in the events file read")
    count = len(messages(portal, job["id"]))
    # ... and nothing follows while it is suspended.
    holds_for(lambda: len(messages(portal, job["id"])) == count == written_messages(
        portal, job["id"]), "no message while suspended", duration=1.5)
    assert count < 60
    assert portal.post(f"/v1/jobs/{job['id']}/resume").json["state"] == "RUNNING"
    wait_for_slurm(job["id"], {"RUNNING", "COMPLETING", "COMPLETED"})
    state = wait_for_state(portal, job["id"], TERMINAL)
    assert state["state"] == "FINISHED"
    assert messages(portal, job["id"]) == [str(i) for i in range(60)]


def test_stop_ends_the_engine_gracefully(portal):
    job = submit(portal, "sleep-loop.xml", resources=ON_SLURM,
                 parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    wait_for(lambda: messages(portal, job["id"]), "a first message")
    reply = portal.post(f"/v1/jobs/{job['id']}/stop")
    assert reply.json["state"] == "ABORTED"
    # SIGTERM reached the engine, which finished its firing and exited 3.
    _, slurm_state, _ = wait_for_slurm(job["id"], {"FAILED", "COMPLETED", "CANCELLED"})
    assert slurm_state == "FAILED", slurm_state
    assert show_job(slurm_job(job["id"])[0])["ExitCode"] == "3:0"
    wait_for(lambda: portal.get(f"/v1/jobs/{job['id']}/state").json["exit_code"] == 3,
             "the engine's exit code 3 recorded")


def test_stop_while_suspended(portal):
    job = submit(portal, "sleep-loop.xml", resources=ON_SLURM,
                 parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    portal.post(f"/v1/jobs/{job['id']}/pause")
    wait_for_slurm(job["id"], {"SUSPENDED"})
    assert portal.post(f"/v1/jobs/{job['id']}/stop").json["state"] == "ABORTED"
    assert wait_for_slurm(job["id"], {"FAILED", "CANCELLED", "COMPLETED"})[1] in (
        "FAILED", "CANCELLED")


def test_kill_cancels_the_slurm_job(portal):
    job = submit(portal, "sleep-loop.xml", resources=ON_SLURM,
                 parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    assert portal.post(f"/v1/jobs/{job['id']}/kill").json["state"] == "ABORTED"
    # SIGKILL to the batch step ends it FAILED by signal 9, or the cancel wins.
    slurm_id, slurm_state, _ = wait_for_slurm(job["id"], {"CANCELLED", "FAILED"})
    assert slurm_state == "CANCELLED" or show_job(slurm_id)["ExitCode"] == "0:9"
    # Slurm's verdict arriving later changes nothing.
    holds_for(lambda: portal.get(f"/v1/jobs/{job['id']}/state").json["state"] == "ABORTED"
              and [e for e in state_path(portal, job["id"]) if e[1] == "ABORTED"] == [
                  ("RUNNING", "ABORTED")], "one RUNNING -> ABORTED, nothing after",
              duration=1.0)
    # SIGKILL, not Slurm's default SIGTERM first: the engine had no chance to
    # write its end event.
    # A job killed before its engine wrote anything has no events file at all.
    events = portal.server.state_dir / "jobs" / job["id"] / "events.jsonl"
    log = events.read_text() if events.exists() else ""
    assert all(json.loads(line)["type"] != "end" for line in log.splitlines())


def test_waiting_is_answered_through_the_answers_file(portal, server):
    job = submit(portal, "ask-input.xml", resources=ON_SLURM)
    wait_for_state(portal, job["id"], "WAITING")
    prompt = portal.get(f"/v1/jobs/{job['id']}/input").json["prompt"]
    assert [f["name"] for f in prompt["prompt"]["fields"]] == ["name", "count"]
    reply = portal.post(f"/v1/jobs/{job['id']}/input", {"answers": {"name": "Ada", "count": 2}})
    assert reply.status == 200 and reply.json["state"] == "RUNNING"
    assert wait_for_state(portal, job["id"], TERMINAL)["state"] == "FINISHED"
    assert messages(portal, job["id"]) == ["Hello Ada x2"]


def test_walltime_exceeded_fails_the_job(portal):
    job = submit(portal, "sleep-loop.xml", resources={**ON_SLURM, "walltime": 2},
                 parameters={".sleeper.period": 100})
    state = wait_for_state(portal, job["id"], TERMINAL)
    assert state["state"] == "FAILED" and state["error"] == "walltime", state
    # Ended by the walltime, not long after it (generously, on a busy machine).
    assert 2 <= state["running_seconds"] < 30
    wait_for_slurm(job["id"], {"FAILED", "CANCELLED", "COMPLETED"})


def test_pending_in_slurm_is_queued_and_pause_holds_it(portal, server, over_time):
    # The over-time job holds one of the node's two CPUs: two more must wait.
    job = submit(portal, "hello.xml", resources={**ON_SLURM, "cpus": 2})
    wait_for_slurm(job["id"], {"PENDING"})
    wait_for(lambda: slurm_job(job["id"])[2] == "Resources",  # once the scheduler has looked
             "Slurm's reason Resources")
    holds_for(lambda: portal.get(f"/v1/jobs/{job['id']}/state").json["state"] == "QUEUED",
              "the job QUEUED while pending in Slurm", duration=1.0)

    status = server.admin("status")
    assert status.returncode == 0, status.stderr
    assert "backend slurm: " in status.stdout and f"{job['id']}" in status.stdout
    assert "PENDING  Resources" in status.stdout
    document = json.loads(server.admin("--json", "status").stdout)
    (entry,) = [b for b in document["backends"] if b["name"] == "slurm"]
    assert entry["controller"] == "up" and entry["jobs"] >= 2
    assert {"job": job["id"], "state": "PENDING", "reason": "Resources"}.items() <= next(
        q for q in entry["queue"] if q["job"] == job["id"]).items()

    paused = portal.post(f"/v1/jobs/{job['id']}/pause").json
    assert paused["state"] == "PAUSED" and paused["paused_from"] == "QUEUED"
    wait_for(lambda: slurm_job(job["id"])[2] in ("JobHeldUser", "JobHeldAdmin"),
             "the job held in Slurm")
    assert portal.post(f"/v1/jobs/{job['id']}/resume").json["state"] == "QUEUED"
    wait_for(lambda: slurm_job(job["id"])[2] not in ("JobHeldUser", "JobHeldAdmin"),
             "the job released in Slurm")
    assert slurm_job(job["id"])[1] == "PENDING"
    assert portal.post(f"/v1/jobs/{job['id']}/stop").json["state"] == "ABORTED"
    assert wait_for_slurm(job["id"], {"CANCELLED"})[1] == "CANCELLED"
    assert state_path(portal, job["id"]) == [
        ("NEW", "QUEUED"), ("QUEUED", "PAUSED"), ("PAUSED", "QUEUED"), ("QUEUED", "ABORTED")]


def test_suspended_in_slurm_is_paused_in_kree(portal):
    job = submit(portal, "sleep-loop.xml", resources=ON_SLURM,
                 parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    slurm_id = str(slurm_job(job["id"])[0])
    subprocess.run(["scontrol", "suspend", slurm_id], check=True)
    state = wait_for_state(portal, job["id"], "PAUSED")
    assert state["paused_from"] == "RUNNING"
    subprocess.run(["scontrol", "resume", slurm_id], check=True)
    wait_for_state(portal, job["id"], "RUNNING")
    reasons = [e["data"]["reason"] for e in events(portal, job["id"])
               if e["type"] == "job.state"]
    assert reasons[-2:] == ["suspended in Slurm", "resumed in Slurm"]
    # And KREE's own pause and resume still work after that.
    portal.post(f"/v1/jobs/{job['id']}/pause")
    wait_for_slurm(job["id"], {"SUSPENDED"})
    portal.post(f"/v1/jobs/{job['id']}/resume")
    wait_for_slurm(job["id"], {"RUNNING"})
    holds_for(lambda: portal.get(f"/v1/jobs/{job['id']}/state").json["state"] == "RUNNING",
              "the job RUNNING after its resume", duration=1.5)
    portal.post(f"/v1/jobs/{job['id']}/kill")
    wait_for_state(portal, job["id"], TERMINAL)


def test_cancelled_behind_kree_s_back_fails_the_job(portal):
    job = submit(portal, "sleep-loop.xml", resources=ON_SLURM,
                 parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    subprocess.run(["scancel", str(slurm_job(job["id"])[0])], check=True)
    state = wait_for_state(portal, job["id"], TERMINAL)
    assert state["state"] == "FAILED"
    assert state["error"] == "cancelled in Slurm (not by KREE)"


def test_slurm_s_time_limit_fails_the_job_with_walltime(portal, over_time):
    """Last: the over-time job reaches Slurm's one-minute limit."""
    state = wait_for_state(portal, over_time["id"], TERMINAL, timeout=150)
    assert wait_for_slurm(over_time["id"], {"TIMEOUT"})[1] == "TIMEOUT"
    assert state["state"] == "FAILED" and state["error"] == "walltime", state
    # The engine ended on Slurm's SIGTERM; its end event (exit 3) was read
    # but Slurm's verdict stands.
    log = (portal.server.state_dir / "jobs" / over_time["id"] / "events.jsonl").read_text()
    assert json.loads(log.splitlines()[-1])["type"] == "end"
    seqs = [e["seq"] for e in events(portal, over_time["id"])]
    assert seqs == list(range(1, len(seqs) + 1))


# -- without a cluster: how the backend reads Slurm and builds its commands --------------

def test_slurm_states_map_to_kree_reasons():
    assert slurm.failure_reason("COMPLETED", cancelled_by_us=False) is None
    assert slurm.failure_reason("FAILED", cancelled_by_us=False) is None
    assert slurm.failure_reason("TIMEOUT", cancelled_by_us=False) == "walltime"
    assert slurm.failure_reason("OUT_OF_MEMORY", cancelled_by_us=True) == "memory"
    assert slurm.failure_reason("NODE_FAIL", cancelled_by_us=False).startswith("node failure")
    assert slurm.failure_reason("CANCELLED", cancelled_by_us=True) is None
    assert slurm.failure_reason("CANCELLED", cancelled_by_us=False) == (
        "cancelled in Slurm (not by KREE)")
    assert slurm.failure_reason("WEIRD", cancelled_by_us=False) == (
        "Slurm ended the job in state WEIRD")


def test_squeue_and_sacct_output_are_parsed():
    views = slurm.parse_squeue("12|RUNNING|node1|None|kree-abc\n"
                               "13|PENDING||Resources|odd|name\n"
                               "14_2|RUNNING|n|None|array\n\n")
    assert sorted(views) == [12, 13]
    assert views[13].name == "odd|name" and views[13].reason == "Resources"
    found = slurm.parse_sacct("12|CANCELLED by 0|kree-abc\n12.batch|CANCELLED|batch\n")
    assert found[12].state == "CANCELLED" and list(found) == [12]


def test_sbatch_arguments_are_an_argument_list(tmp_path):
    import datetime

    from kree.states import JobState

    job = Job(id="01abc", frontend_id=1, user=None, workflow_uri="kree:workflow/x",
              workflow_sha256=None, state=JobState.QUEUED, paused_from=None, priority=0,
              created_at=datetime.datetime.now(datetime.timezone.utc), queued_at=None,
              started_at=None, ended_at=None, running_seconds=0.0, running_since=None,
              exit_code=None, error=None, progress=0.0, cpu_seconds=None,
              peak_memory_bytes=None, job_dir=str(tmp_path / "j; rm -rf /"),
              resources={"cpus": 2, "memory": 1536 * 1024**2 + 1, "walltime": 61,
                         "partition": "long"},
              backend="slurm", backend_ref=None, events_consumed=0, last_seq=0)
    args = slurm.sbatch_arguments(job, SlurmConfig(sbatch_args=["--account=x"]),
                                  tmp_path / "s.sh")
    assert args[:2] == ["--parsable", "--job-name=kree-01abc"]
    assert f"--chdir={tmp_path / 'j; rm -rf /'}" in args
    assert {"--partition=long", "--cpus-per-task=2", "--mem=1537M", "--time=2",
            "--no-requeue"} <= set(args)
    assert args[-2:] == ["--account=x", str(tmp_path / "s.sh")]
