"""
[backends.slurm] pause_method = "signal": where KREE's user may not suspend jobs,
pause is SIGSTOP to the job's processes (scancel --signal=STOP --full) and
resume is SIGCONT; Slurm shows the job STOPPED, then RUNNING again.
"""

import psutil

from live import LiveKree, job_processes, kill_active_jobs, submit, wait_for_state
from slurm_cluster import SLURM_CONFIG, require_slurm, slurm_job
from waiting import holds_for, wait_for

TERMINAL = ("FINISHED", "FAILED", "ABORTED")


def all_stopped(job_id):
    processes = job_processes(job_id)
    return processes and all(p.status() == psutil.STATUS_STOPPED for p in processes)


def test_pause_by_signal(tmp_path):
    require_slurm()
    config = SLURM_CONFIG + 'pause_method = "signal"\n'
    server = LiveKree(tmp_path, frontends=("portal",), config_text=config).start()
    client = server.client("portal")
    try:
        # Ten seconds of work: the pause must find it running even on a busy
        # machine (two seconds were not always enough).
        job = submit(client, "sleep-loop.xml", resources={"backend": "slurm"}, parameters={
            ".sleeper.period": 100, ".sleeper.SDF Director.iterations": 100})
        wait_for_state(client, job["id"], "RUNNING")
        assert client.post(f"/v1/jobs/{job['id']}/pause").json["state"] == "PAUSED"
        wait_for(lambda: all_stopped(job["id"]), "every process of the job stopped")
        wait_for(lambda: slurm_job(job["id"])[1] == "STOPPED", "Slurm showing STOPPED")
        # squeue's STOPPED is KREE's own doing: still PAUSED, not paused twice.
        holds_for(lambda: client.get(f"/v1/jobs/{job['id']}/state").json["state"] == "PAUSED",
                  "the job PAUSED", duration=1.5)
        assert client.post(f"/v1/jobs/{job['id']}/resume").json["state"] == "RUNNING"
        wait_for(lambda: slurm_job(job["id"])[1] != "STOPPED", "Slurm no longer STOPPED")
        state = wait_for_state(client, job["id"], TERMINAL)
        assert state["state"] == "FINISHED", state
        texts = [m["text"] for m in
                 client.get(f"/v1/jobs/{job['id']}/messages?limit=200").json["messages"]]
        assert texts == [str(i) for i in range(100)]
        reasons = [e["data"]["reason"] for e in
                   client.get(f"/v1/jobs/{job['id']}/events?limit=200").json["events"]
                   if e["type"] == "job.state"]
        assert not any("in Slurm" in reason for reason in reasons), reasons
    finally:
        kill_active_jobs(client)
        assert server.stop() == 0, server.log
