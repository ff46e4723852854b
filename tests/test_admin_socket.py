"""The admin socket of a running kreed: protocol, permissions, commands."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest

from kree.admin import client
from live import LiveKree, submit, wait_for_state

CONFIG = """
[supervisor]
max_running = 2
stop_grace_seconds = 2
monitor_interval_seconds = 0.5
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LiveKree(tmp_path_factory.mktemp("admin"), frontends=("portal",),
                      config_text=CONFIG).start()
    yield server
    assert server.stop() == 0, server.log


def raw(server, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(server.config.admin_socket))
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_socket_is_private_to_the_daemons_user(server):
    mode = os.stat(server.config.admin_socket)
    assert stat.S_ISSOCK(mode.st_mode)
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None,
                    reason="needs root to try the socket as another user")
def test_another_user_cannot_connect(server):
    os.chmod(server.state_dir, 0o755)  # let the other user reach the socket file itself
    try:
        result = subprocess.run(
            ["runuser", "-u", "nobody", "--", sys.executable, "-c",
             "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
             str(server.config.admin_socket)], capture_output=True, text=True, timeout=30)
    finally:
        os.chmod(server.state_dir, 0o700)
    assert result.returncode != 0 and "Permission denied" in result.stderr


def test_ping_and_status(server):
    assert client.call(server.config.admin_socket, "ping") == {"pong": True}
    status = client.call(server.config.admin_socket, "status")
    assert status["daemon"] == "up" and status["pid"] == server.process.pid
    assert status["max_running"] == 2 and "up to date" in status["schema"]
    assert status["subscriptions"] == {"active": 0, "failing": []}


@pytest.mark.parametrize("payload, code", [
    (b"not json\n", "malformed"),
    (b"[1, 2]\n", "malformed"),
    (b'{"command": 5}\n', "malformed"),
    (b'{"command": "status", "args": [1]}\n', "malformed"),
    (b'{"command": "self-destruct"}\n', "unknown_command"),
    (b'{"command": "jobs.stop"}\n', "malformed"),
    (b'{"command": "jobs.stop", "args": {"id": "nosuchjob"}}\n', "job_not_found"),
    (b'{"command": "jobs.purge", "args": {"older_than_seconds": "old"}}\n', "malformed"),
    (b"x" * 70000 + b"\n", "too_large"),
])
def test_bad_requests_get_clear_errors(server, payload, code):
    (answer,) = raw(server, payload)
    assert answer["ok"] is False and answer["error"]["code"] == code
    assert client.call(server.config.admin_socket, "ping")  # still serving


def test_job_actions_as_admin(server):
    portal = server.client("portal")
    job = submit(portal, "sleep-loop.xml", parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    path = server.config.admin_socket
    assert client.call(path, "jobs.pause", {"id": job["id"]})["state"] == "PAUSED"
    with pytest.raises(client.AdminCallFailed) as info:
        client.call(path, "jobs.pause", {"id": job["id"]})
    assert info.value.code == "invalid_state"
    assert client.call(path, "jobs.resume", {"id": job["id"]})["state"] == "RUNNING"
    assert client.call(path, "jobs.kill", {"id": job["id"]})["state"] == "ABORTED"
    events = portal.get(f"/v1/jobs/{job['id']}/events").json["events"]
    assert events[-1]["data"]["reason"] == "kill by admin"


def test_purge_reports_progress_and_removes_jobs(server):
    portal = server.client("portal")
    done = [submit(portal, "hello.xml") for _ in range(3)]
    for job in done:
        wait_for_state(portal, job["id"], "FINISHED")
    kept = submit(portal, "hello.xml", queue=False)
    steps = []
    result = client.call(server.config.admin_socket, "jobs.purge",
                         {"older_than_seconds": 0}, on_progress=steps.append)
    assert result["purged"] >= 3
    assert steps[0]["done"] == 0 and steps[-1]["done"] == steps[-1]["total"]
    for job in done:
        assert portal.get(f"/v1/jobs/{job['id']}").status == 404
        assert not (server.state_dir / "jobs" / job["id"]).exists()
    assert portal.get(f"/v1/jobs/{kept['id']}").status == 200  # NEW is not purged by default


def test_no_daemon_means_a_clear_error(tmp_path):
    with pytest.raises(client.DaemonNotRunning, match="start it with `kreed`"):
        client.call(tmp_path / "admin.sock", "ping")


def admin(server, *args):
    return server.admin(*args)


def test_kree_admin_status_and_actions_with_the_daemon_up(server):
    result = admin(server, "--json", "status")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["daemon"] == "up" and status["max_running"] == 2
    assert "kreed" in admin(server, "status").stdout
    portal = server.client("portal")
    job = submit(portal, "sleep-loop.xml", parameters={".sleeper.period": 100})
    wait_for_state(portal, job["id"], "RUNNING")
    result = admin(server, "jobs", "pause", job["id"])
    assert result.returncode == 0 and "PAUSED (from RUNNING)" in result.stdout
    result = admin(server, "jobs", "pause", job["id"])
    assert result.returncode == 1 and "cannot pause" in result.stderr
    assert admin(server, "--json", "jobs", "kill", job["id"]).returncode == 0
    result = admin(server, "jobs", "purge", "--older-than", "0s")
    assert result.returncode == 0 and "through kreed" in result.stdout
    assert "purging:" in result.stderr
    assert portal.get(f"/v1/jobs/{job['id']}").status == 404
    assert admin(server, "jobs", "purge", "--older-than", "soon").returncode == 2


def test_kree_admin_without_the_daemon(tmp_path):
    down = LiveKree(tmp_path, frontends=("portal",), config_text=CONFIG)
    result = down.admin("status")
    assert result.returncode == 1 and "start it with `kreed`" in result.stderr
    result = down.admin("--json", "status")
    assert json.loads(result.stdout)["daemon"] == "down"
    result = down.admin("jobs", "stop", "01m8000000000000000000000a")
    assert result.returncode == 1 and "daemon not running" in result.stderr
    # Purge works without the daemon.
    down.start()
    portal = down.client("portal")
    job = submit(portal, "hello.xml")
    wait_for_state(portal, job["id"], "FINISHED")
    assert down.stop() == 0
    result = down.admin("jobs", "purge", "--older-than", "0")
    assert result.returncode == 0 and "through the database" in result.stdout
    assert not (down.state_dir / "jobs" / job["id"]).exists()
    shown = down.admin("jobs", "show", job["id"])
    assert shown.returncode == 1
