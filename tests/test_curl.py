"""
End to end with curl (a client we did not write) and the certificates that
`kreed --dev` creates on first start.
"""

import json
import shlex
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None and not __import__("os").environ.get("CI"),
    reason="curl is not installed (.ci/run installs it)",
)


@pytest.fixture
def dev_kreed(tmp_path):
    state = tmp_path / "state"
    out = tmp_path / "kreed.out"
    with open(out, "w") as stdout, open(tmp_path / "kreed.err", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", "from kree.daemon import main; main()",
             "--dev", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
            stdout=stdout, stderr=stderr, cwd=tmp_path,
        )
    deadline = time.monotonic() + 30
    while "curl " not in out.read_text():
        assert process.poll() is None, (tmp_path / "kreed.err").read_text()
        assert time.monotonic() < deadline, "kreed --dev printed no curl command"
        time.sleep(0.05)
    command = next(line.strip() for line in out.read_text().splitlines() if "curl " in line)
    yield state, shlex.split(command), process
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def curl(*args):
    result = subprocess.run(["curl", "--silent", "--show-error", *args],
                            capture_output=True, timeout=30)
    return result


def test_dev_mode_prints_a_working_curl_command(dev_kreed):
    state, command, _ = dev_kreed
    result = curl(*command[1:])
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["frontend"] == "dev" and info["api_version"] == "v1"
    # Keys are private.
    for key in (state / "certs" / "ca.key", state / "certs" / "server.key",
                state / "certs" / "frontends" / "dev.key"):
        assert key.stat().st_mode & 0o077 == 0


def test_curl_drives_a_job(dev_kreed, tmp_path):
    state, command, _ = dev_kreed
    url = command[-1].rsplit("/v1/", 1)[0]
    tls = command[1:-1]  # --cacert ... --cert ... --key ...
    workflow = tmp_path / "hello.xml"
    workflow.write_bytes((Path(__file__).parent.parent / "workflows" / "sleep-loop.xml")
                         .read_bytes())
    upload = curl(*tls, "-H", "Content-Type: application/xml", "--data-binary", f"@{workflow}",
                  f"{url}/v1/workflows")
    uri = json.loads(upload.stdout)["uri"]
    created = curl(*tls, "-H", "Content-Type: application/json", "-H", "X-KREE-User: alice",
                   "--data", json.dumps({"workflow": uri, "queue": True}),
                   "--write-out", "\n%{http_code}", f"{url}/v1/jobs")
    body, status = created.stdout.decode().rsplit("\n", 1)
    assert status == "201"
    job = json.loads(body)
    assert job["state"] == "QUEUED" and job["user"] == "alice"
    stopped = curl(*tls, "-X", "POST", f"{url}/v1/jobs/{job['id']}/stop")
    assert json.loads(stopped.stdout)["state"] == "ABORTED"
    refused = curl(*tls, "-X", "POST", "--write-out", "\n%{http_code}",
                   f"{url}/v1/jobs/{job['id']}/resume")
    body, status = refused.stdout.decode().rsplit("\n", 1)
    assert status == "409" and json.loads(body)["error"]["code"] == "invalid_state"


def test_curl_without_a_client_certificate_is_refused(dev_kreed):
    state, command, _ = dev_kreed
    result = curl("--cacert", str(state / "certs" / "ca.pem"), command[-1])
    assert result.returncode != 0 and result.stdout == b""


def test_second_start_keeps_the_dev_credentials(tmp_path):
    state = tmp_path / "state"
    args = [sys.executable, "-c", "from kree.daemon import main; main()", "--dev",
            "--state-dir", str(state), "--listen", "127.0.0.1:0"]
    fingerprints = []
    for _ in range(2):
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   cwd=tmp_path, text=True)
        for line in process.stdout:
            if "curl " in line:
                break
        fingerprints.append((state / "certs" / "ca.pem").read_bytes())
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert fingerprints[0] == fingerprints[1]
    result = subprocess.run([sys.executable, "-m", "kree.admin", "--state-dir", str(state),
                             "--json", "frontend", "list"], capture_output=True, text=True)
    assert [f["name"] for f in json.loads(result.stdout)["frontends"]] == ["dev"]
