"""
A job directory on a full file system (a small tmpfs): the job FAILS with a
clear reason, and the database and the daemon carry on.
"""

import os
import subprocess

import pytest

from live import LiveKree, submit, wait_for_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def test_a_full_disk_fails_the_job_and_nothing_else(tmp_path):
    server = LiveKree(tmp_path, frontends=("portal",),
                      config_text="[supervisor]\nmax_running = 1\nstop_grace_seconds = 1\n")
    jobs_dir = server.state_dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(jobs_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        server.start()
        client = server.client("portal")
        job = submit(client, "products.xml",
                     parameters={".products.SDF Director.iterations": 1_000_000})
        state = wait_for_state(client, job["id"], ("FINISHED", "FAILED"), timeout=60)
        assert state["state"] == "FAILED"
        assert "space" in state["error"].lower(), state["error"]
        # The database and the daemon are fine: the next job's record is written.
        after = client.post("/v1/jobs", {"workflow": job["workflow"]})
        assert after.status == 201
        assert client.get(f"/v1/jobs/{job['id']}/events").status == 200
        assert server.admin("db", "current").returncode == 0
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(jobs_dir)], capture_output=True)
