"""
kill -9 of kreed while Slurm runs its jobs, then a restart: Slurm kept the
jobs, and the daemon re-adopts each by the Slurm job id in its record.  While
the daemon is down one job finishes and a pending one starts and finishes;
a paused one stays suspended.  Afterwards every job ends right, no event is
missing or doubled, and no job was submitted to Slurm twice.  And a Slurm job
whose id never reached the store is found again by its name.
"""

import subprocess
import sys
import time

from live import LiveKree, kill_active_jobs, submit, wait_for_state
from slurm_cluster import SLURM_CONFIG, require_slurm, slurm_job, slurm_jobs
from waiting import holds_for, wait_for

TERMINAL = ("FINISHED", "FAILED", "ABORTED")
ON_SLURM = {"backend": "slurm"}


def messages(client, job_id):
    """The engine's messages (not Slurm's notes on why a job is pending)."""
    return [m["text"] for m in client.get(f"/v1/jobs/{job_id}/messages?limit=500").json["messages"]
            if m["source"] != "slurm"]


def check_log(client, job_id):
    events = client.get(f"/v1/jobs/{job_id}/events?limit=500").json["events"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    state, path = "NEW", []
    for event in events:
        if event["type"] == "job.state":
            assert event["data"]["from"] == state, events
            state = event["data"]["to"]
            path.append(state)
    return path


def wait_slurm_state(job_id, states, timeout=90):
    def reached():
        rows = slurm_jobs(job_id)
        return rows[0] if rows and rows[0][1] in states else None

    return wait_for(reached, f"the Slurm job of {job_id} in {states}", timeout=timeout,
                    interval=0.1)


def test_kill_9_while_slurm_runs_the_jobs(tmp_path):
    require_slurm()
    server = LiveKree(tmp_path, frontends=("portal",), config_text=SLURM_CONFIG).start()
    client = server.client("portal")
    try:
        running = submit(client, "sleep-loop.xml", resources=ON_SLURM, parameters={
            ".sleeper.period": 100, ".sleeper.SDF Director.iterations": 40})
        waiting = submit(client, "ask-input.xml", resources=ON_SLURM)
        wait_for_state(client, running["id"], "RUNNING")
        wait_for_state(client, waiting["id"], "WAITING")
        # The node's two CPUs are taken: this one waits in Slurm, QUEUED here.
        pending = submit(client, "sleep-loop.xml", resources=ON_SLURM, parameters={
            ".sleeper.period": 100, ".sleeper.SDF Director.iterations": 5})
        wait_slurm_state(pending["id"], {"PENDING"})
        paused = client.post(f"/v1/jobs/{waiting['id']}/pause").json
        assert paused["paused_from"] == "WAITING"
        wait_slurm_state(waiting["id"], {"SUSPENDED"})
        assert client.get(f"/v1/jobs/{pending['id']}/state").json["state"] == "QUEUED"

        server.process.kill()
        server.process.wait()
        server._stderr.close()
        # Meanwhile Slurm finishes the running job and starts the pending one.
        wait_slurm_state(running["id"], {"COMPLETED"})
        wait_slurm_state(pending["id"], {"RUNNING", "COMPLETING", "COMPLETED"})

        restarted = time.monotonic()
        server.start()
        client = server.client("portal")
        assert wait_for_state(client, running["id"], TERMINAL)["state"] == "FINISHED"
        assert time.monotonic() - restarted < 15
        assert wait_for_state(client, pending["id"], TERMINAL)["state"] == "FINISHED"
        assert client.get(f"/v1/jobs/{waiting['id']}/state").json["state"] == "PAUSED"
        assert slurm_job(waiting["id"])[1] == "SUSPENDED"

        assert client.post(f"/v1/jobs/{waiting['id']}/resume").json["state"] == "WAITING"
        wait_slurm_state(waiting["id"], {"RUNNING"})
        reply = client.post(f"/v1/jobs/{waiting['id']}/input",
                            {"answers": {"name": "Kim", "count": 3}})
        assert reply.status == 200, reply.body
        assert wait_for_state(client, waiting["id"], TERMINAL)["state"] == "FINISHED"

        assert messages(client, running["id"]) == [str(i) for i in range(40)]
        assert messages(client, pending["id"]) == [str(i) for i in range(5)]
        assert messages(client, waiting["id"]) == ["Hello Kim x3"]
        assert check_log(client, running["id"]) == ["QUEUED", "RUNNING", "FINISHED"]
        assert check_log(client, pending["id"]) == ["QUEUED", "RUNNING", "FINISHED"]
        assert check_log(client, waiting["id"]) == [
            "QUEUED", "RUNNING", "WAITING", "PAUSED", "WAITING", "RUNNING", "FINISHED"]
        for job in (running, waiting, pending):
            assert len(slurm_jobs(job["id"])) == 1  # submitted once, adopted after
        assert "re-adopted" in server.log
    finally:
        kill_active_jobs(client)
        server.stop()


def test_a_slurm_job_whose_id_never_reached_the_store_is_found_by_name(tmp_path):
    """
    kreed can die between sbatch and the commit of the Slurm job id.  Then
    the job is still QUEUED without a backend reference and is dispatched
    again: the backend must find the Slurm job by its name, not submit a
    second one.  Here the "earlier" submission is made by hand (held, so it
    waits), while [backends.slurm] max_jobs = 1 keeps the KREE job from being handed
    to Slurm until the blocker ends.
    """
    require_slurm()
    config = SLURM_CONFIG + "max_jobs = 1\n"
    server = LiveKree(tmp_path, frontends=("portal",), config_text=config).start()
    client = server.client("portal")
    try:
        blocker = submit(client, "sleep-loop.xml", resources=ON_SLURM,
                         parameters={".sleeper.period": 100})
        wait_for_state(client, blocker["id"], "RUNNING")
        job = submit(client, "hello.xml", resources=ON_SLURM)
        job_dir = server.state_dir / "jobs" / job["id"]
        subprocess.run(
            ["sbatch", "--parsable", "--hold", f"--job-name=kree-{job['id']}",
             f"--output={tmp_path / 'orphan.log'}", f"--chdir={tmp_path}",
             f"--wrap={sys.executable} -m kree.engine run --no-events-fd {job_dir}"],
            check=True, capture_output=True)
        # Polls see it, and the job stays QUEUED behind the blocker.
        holds_for(lambda: client.get(f"/v1/jobs/{job['id']}/state").json["state"] == "QUEUED",
                  "the job QUEUED", duration=1.5)
        client.post(f"/v1/jobs/{blocker['id']}/kill")
        wait_for(lambda: "found its Slurm job" in server.log, "kreed finding the Slurm job",
                 interval=0.1)
        assert len(slurm_jobs(job["id"])) == 1
        assert slurm_job(job["id"])[1:] == ("PENDING", "JobHeldUser")
        # Our pause and resume release the hold it was submitted with.
        assert client.post(f"/v1/jobs/{job['id']}/pause").json["state"] == "PAUSED"
        assert client.post(f"/v1/jobs/{job['id']}/resume").json["state"] == "QUEUED"
        assert wait_for_state(client, job["id"], TERMINAL)["state"] == "FINISHED"
        assert messages(client, job["id"]) == ["Hello, world"]
        assert len(slurm_jobs(job["id"])) == 1
    finally:
        kill_active_jobs(client)
        server.stop()


def test_jobs_left_in_slurm_for_ended_or_deleted_records_are_cancelled(tmp_path):
    """
    kreed stopped during a stop's grace period, or a record deleted while it
    was down: Slurm still runs a kree-<id> job that nothing follows.  At
    start kreed cancels it.
    """
    require_slurm()
    server = LiveKree(tmp_path, frontends=("portal",), config_text=SLURM_CONFIG).start()
    client = server.client("portal")
    try:
        done = submit(client, "hello.xml", resources=ON_SLURM)
        assert wait_for_state(client, done["id"], TERMINAL)["state"] == "FINISHED"
        assert server.stop() == 0
        strays = {}
        for job_id in (done["id"], "01nosuchjob0000000000000000"):
            out = subprocess.run(
                ["sbatch", "--parsable", f"--job-name=kree-{job_id}", "--output=/dev/null",
                 "--wrap=sleep 120"], check=True, capture_output=True, text=True).stdout
            strays[job_id] = int(out.strip().split(";")[0])
        wait_for(lambda: all(slurm_state(sid) in ("RUNNING", "PENDING")
                             for sid in strays.values()), "the strays in Slurm", interval=0.1)
        server.start()
        for job_id, slurm_id in strays.items():
            wait_for(lambda: slurm_state(slurm_id) == "CANCELLED",
                     f"the stray of {job_id} cancelled", interval=0.1)
        assert "still in slurm but deleted; cancelling it" in server.log
        assert "still in slurm but FINISHED; cancelling it" in server.log
        assert client.get(f"/v1/jobs/{done['id']}/state").json["state"] == "FINISHED"
    finally:
        server.stop()
        for line in subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True,
                                   text=True).stdout.splitlines():
            slurm_id, name = line.split("|", 1)
            if name.startswith("kree-01nosuchjob"):
                subprocess.run(["scancel", slurm_id])


def slurm_state(slurm_id: int) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(slurm_id), "-o", "%T"],
                         capture_output=True, text=True).stdout.strip()
    return out or "GONE"
