"""
The C{kree} command line, run as a real subprocess against a live kreed
(the module's C{kree_server}): what people and scripts see, on stdout,
stderr and in the exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kree import pki

WORKFLOW = (
    '<?xml version="1.0"?>\n'
    '<entity name="hello" class="ptolemy.actor.TypedCompositeActor">'
    '<property name="SDF Director" class="ptolemy.domains.sdf.kernel.SDFDirector"/>'
    + "".join(f'<property name="{name}" value="1"/>'
              for name in ("step", "name", "quoted", "values", "flag"))
    + "</entity>\n"
)
TIMEOUT = 30


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any KREE_ setting, plus C{extra}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KREE_")}
    env.update(extra)
    return env


def url(server) -> str:
    return f"https://localhost:{server.port}"


def connection_flags(server, frontend: str = "portal") -> list[str]:
    cert, key = server.frontend_files(frontend)
    return ["--url", url(server), "--cert", str(cert), "--key", str(key),
            "--ca", str(server.ca_path)]


def run_kree(*args: str, env: dict[str, str] | None = None, text: bool = True,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kree.cli", *args],
        capture_output=True, text=text, timeout=TIMEOUT, env=env or clean_env(), cwd=cwd,
    )


def start_kree(*args: str) -> subprocess.Popen:
    # SIGINT at its default, so the child gets KeyboardInterrupt even when
    # the test runner was started with SIGINT ignored (in the background).
    return subprocess.Popen(
        [sys.executable, "-m", "kree.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture
def kree(kree_server):
    """Run C{kree} as the portal frontend; the CompletedProcess."""
    def run(*args: str, frontend: str = "portal", **kwargs) -> subprocess.CompletedProcess:
        return run_kree(*connection_flags(kree_server, frontend), *args, **kwargs)

    return run


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess, code: str, exit_code: int = 1) -> str:
    """The failure's stderr, after checking its shape: one line, no traceback."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("kree: ")
    assert result.stderr.rstrip().endswith(f"({code})"), result.stderr
    return result.stderr


@pytest.fixture
def workflow_file(tmp_path) -> Path:
    path = tmp_path / "hello.xml"
    path.write_text(WORKFLOW)
    return path


@pytest.fixture
def workflow_uri(kree, workflow_file) -> str:
    return ok(kree("upload", str(workflow_file))).strip()


@pytest.fixture
def new_job(kree, workflow_uri) -> str:
    return ok(kree("submit", workflow_uri)).strip()


@pytest.fixture
def queued_job(kree, workflow_uri) -> str:
    return ok(kree("submit", workflow_uri, "--queue")).strip()


def job_json(kree, job_id: str) -> dict:
    return json.loads(ok(kree("--json", "status", job_id)))


# -- upload and submit -----------------------------------------------------------------


def test_upload_prints_the_workflow_uri(kree, workflow_file):
    uri = ok(kree("upload", str(workflow_file))).strip()
    assert uri.startswith("kree:workflow/") and len(uri) == len("kree:workflow/") + 64
    document = json.loads(ok(kree("--json", "upload", str(workflow_file))))
    assert document["uri"] == uri
    assert document["size"] == len(WORKFLOW.encode())


def test_upload_of_something_else_is_refused(kree, tmp_path):
    not_moml = tmp_path / "page.xml"
    not_moml.write_text("<html></html>")
    refused(kree("upload", str(not_moml)), "invalid_workflow")


def test_submit_with_parameters_and_inputs(kree, workflow_uri):
    job_id = ok(kree(
        "submit", workflow_uri,
        "--param", ".hello.step=2",
        "--param", ".hello.name=abc",
        "--param", '.hello.quoted="5"',
        "--param", ".hello.values=[1, 2.5]",
        "--param", ".hello.flag=true",
        "--input", "data=https://example.org/data.csv",
        "--queue",
    )).strip()
    job = job_json(kree, job_id)
    assert job["state"] == "QUEUED"
    assert job["workflow"] == workflow_uri
    assert job["parameters"] == {
        ".hello.step": 2, ".hello.name": "abc", ".hello.quoted": "5",
        ".hello.values": [1, 2.5], ".hello.flag": True,
    }
    assert job["inputs"]["data"]["uri"] == "https://example.org/data.csv"

    text = ok(kree("status", job_id))
    assert f"id: {job_id}\n" in text
    assert "state: QUEUED\n" in text
    assert "  .hello.step: 2\n" in text
    assert "  data: https://example.org/data.csv" in text


def test_submit_with_resources(kree, workflow_uri):
    job_id = ok(kree("submit", workflow_uri, "--resource", "cpus=2", "--resource",
                     "walltime=00:10:00", "--resource", "memory=512M")).strip()
    assert job_json(kree, job_id)["resources"] == {
        "cpus": 2, "walltime": 600, "memory": 512 * 1024**2}
    message = refused(kree("submit", workflow_uri, "--resource", "backend=slurm"),
                      "invalid_resources")
    assert "backend 'slurm' is not enabled on this server" in message
    refused(kree("submit", workflow_uri, "--resource", "gpus=1"), "invalid_resources")


def test_submit_json_prints_the_job(kree, workflow_uri):
    job = json.loads(ok(kree("--json", "submit", workflow_uri)))
    assert job["state"] == "NEW"
    assert job["workflow"] == workflow_uri


def test_submit_a_local_file_uploads_it_first(kree, workflow_file, workflow_uri):
    job_id = ok(kree("submit", str(workflow_file))).strip()
    assert job_json(kree, job_id)["workflow"] == workflow_uri


def test_submit_refusals(kree, workflow_uri, tmp_path):
    message = refused(kree("submit", workflow_uri, "--param", "step=1"), "invalid_parameter")
    assert "step" in message
    refused(kree("submit", "kree:workflow/" + "0" * 64), "workflow_not_found")
    # Usage errors: exit 2 before anything is sent.
    result = kree("submit", workflow_uri, "--param", "no-equals-sign")
    assert result.returncode == 2 and "NAME=VALUE" in result.stderr
    result = kree("submit", str(tmp_path / "missing.xml"))
    assert result.returncode == 2 and "no such file" in result.stderr


# -- list ------------------------------------------------------------------------------


def test_list_as_table_and_json_with_filters(kree, new_job, queued_job):
    table = ok(kree("list", "--limit", "500"))
    header, *rows = table.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "USER"]
    assert any(row.split()[:2] == [new_job, "NEW"] for row in rows)
    assert any(row.split()[:2] == [queued_job, "QUEUED"] for row in rows)

    queued = json.loads(ok(kree("--json", "list", "--state", "QUEUED", "--limit", "500")))
    ids = {job["id"] for job in queued["jobs"]}
    assert queued_job in ids and new_job not in ids
    assert {job["state"] for job in queued["jobs"]} == {"QUEUED"}

    one = json.loads(ok(kree("list", "--limit", "1", "--json")))
    assert len(one["jobs"]) == 1 and one["next"]

    refused(kree("list", "--state", "SLEEPING"), "invalid_request")


def test_user_header_and_user_filter(kree, workflow_uri):
    job_id = ok(kree("--user", "alice", "submit", workflow_uri)).strip()
    assert job_json(kree, job_id)["user"] == "alice"
    alice = json.loads(ok(kree("--json", "list", "--user", "alice", "--limit", "500")))
    assert [job["id"] for job in alice["jobs"]] == [job_id]


# -- state actions and delete ----------------------------------------------------------


def test_pause_resume_stop(kree, queued_job):
    assert ok(kree("pause", queued_job)).strip() == f"{queued_job}: PAUSED (from QUEUED)"
    assert json.loads(ok(kree("--json", "resume", queued_job)))["state"] == "QUEUED"
    stopped = ok(kree("stop", queued_job, "--reason", "no longer needed"))
    assert stopped.strip() == f"{queued_job}: ABORTED"
    events = ok(kree("events", queued_job))
    assert "QUEUED -> ABORTED (no longer needed)" in events


def test_queue_and_kill(kree, new_job):
    assert ok(kree("queue", new_job)).strip() == f"{new_job}: QUEUED"
    assert ok(kree("kill", new_job)).strip() == f"{new_job}: ABORTED"


def test_action_in_the_wrong_state_is_refused_with_the_state(kree, new_job):
    message = refused(kree("resume", new_job), "invalid_state")
    assert "NEW" in message
    assert job_json(kree, new_job)["state"] == "NEW"


def test_json_errors_print_the_error_document(kree, new_job):
    result = kree("--json", "resume", new_job)
    assert result.returncode == 1
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "invalid_state"
    assert error["details"]["state"] == "NEW"


def test_delete(kree, queued_job, new_job):
    refused(kree("delete", queued_job), "invalid_state")  # still active
    assert ok(kree("delete", new_job)).strip() == f"deleted {new_job}"
    refused(kree("status", new_job), "job_not_found")
    refused(kree("delete", new_job), "job_not_found")


def test_another_frontends_job_is_not_found(kree, new_job):
    refused(kree("status", new_job, frontend="gateway"), "job_not_found")


def test_answer_without_a_waiting_job(kree, queued_job):
    message = refused(kree("answer", queued_job, "x=1", "name=abc"), "not_waiting")
    assert "QUEUED" in message
    result = kree("answer", queued_job)
    assert result.returncode == 2  # at least one KEY=VALUE


# -- waiting and events ----------------------------------------------------------------


def test_submit_wait_ends_when_the_job_is_stopped(kree_server, kree, workflow_uri):
    waiting = start_kree(*connection_flags(kree_server),
                         "submit", workflow_uri, "--queue", "--wait")
    try:
        job_id = waiting.stdout.readline().strip()
        assert job_id, waiting.stderr.read()
        assert waiting.stdout.readline().strip() == f"{job_id}: NEW -> QUEUED (queued at creation)"
        ok(kree("stop", job_id))
        out, err = waiting.communicate(timeout=TIMEOUT)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 1
    assert out.strip().endswith("QUEUED -> ABORTED (stop requested by portal)")
    assert err.strip() == f"kree: job {job_id} ended ABORTED: stop requested by portal"


def test_events_text_and_json(kree, queued_job):
    ok(kree("pause", queued_job))
    lines = ok(kree("events", queued_job)).splitlines()
    assert [line.split()[2] for line in lines] == ["job.created", "job.state", "job.state"]
    assert lines[2].endswith("QUEUED -> PAUSED (pause requested by portal)")
    events = [json.loads(line) for line in ok(kree("--json", "events", queued_job)).splitlines()]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[2]["data"]["to"] == "PAUSED"
    after = ok(kree("events", queued_job, "--after", "2")).splitlines()
    assert len(after) == 1 and "PAUSED" in after[0]


def test_events_follow_ends_on_the_terminal_state(kree_server, kree, queued_job):
    following = start_kree(*connection_flags(kree_server),
                           "--json", "events", "--follow", queued_job)
    try:
        first = json.loads(following.stdout.readline())
        assert first["type"] == "job.created"
        assert json.loads(following.stdout.readline())["data"]["to"] == "QUEUED"
        # Now in a long poll; the kill must wake it.
        ok(kree("kill", queued_job))
        out, err = following.communicate(timeout=TIMEOUT)
    finally:
        if following.poll() is None:
            following.kill()
            following.wait()
    assert following.returncode == 0, err
    last = json.loads(out.splitlines()[-1])
    assert (last["type"], last["data"]["to"]) == ("job.state", "ABORTED")


def test_events_follow_ends_on_delete(kree_server, kree, new_job):
    following = start_kree(*connection_flags(kree_server), "events", "-f", new_job)
    try:
        assert "job.created" in following.stdout.readline()
        ok(kree("delete", new_job))
        out, err = following.communicate(timeout=TIMEOUT)
    finally:
        if following.poll() is None:
            following.kill()
            following.wait()
    assert following.returncode == 0, err
    assert "job.deleted" in out.splitlines()[-1]


def test_events_follow_interrupted_quietly(kree_server, new_job):
    following = start_kree(*connection_flags(kree_server), "events", "--follow", new_job)
    try:
        assert "job.created" in following.stdout.readline()
        following.send_signal(signal.SIGINT)
        out, err = following.communicate(timeout=TIMEOUT)
    finally:
        if following.poll() is None:
            following.kill()
            following.wait()
    assert following.returncode == 130
    assert err == "" and out == ""


# -- results and products --------------------------------------------------------------


def test_results_and_fetch(kree_server, kree, new_job, tmp_path):
    products = kree_server.state_dir / "jobs" / new_job / "products"
    products.mkdir(parents=True, exist_ok=True)
    data = bytes(range(256)) * 1000 + b"\r\n\x00end"
    (products / "table.bin").write_bytes(data)
    (products / "summary.txt").write_text("mean 4.2\n")

    text = ok(kree("results", new_job))
    assert "state: NEW" in text
    assert "table.bin" in text and str(len(data)) in text
    results = json.loads(ok(kree("--json", "results", new_job)))
    assert {p["name"]: p["size"] for p in results["products"]} == {
        "summary.txt": 9, "table.bin": len(data),
    }

    target = tmp_path / "out" / "table.bin"
    target.parent.mkdir()
    result = kree("fetch", new_job, "table.bin", "-o", str(target))
    ok(result)
    assert target.read_bytes() == data
    assert f"wrote {len(data)} bytes" in result.stderr
    assert list(target.parent.iterdir()) == [target]  # no partial files left

    to_stdout = kree("fetch", new_job, "table.bin", text=False)
    assert to_stdout.returncode == 0 and to_stdout.stdout == data
    assert ok(kree("fetch", new_job, "summary.txt")) == "mean 4.2\n"

    missing = tmp_path / "out" / "missing"
    refused(kree("fetch", new_job, "missing", "-o", str(missing)), "product_not_found")
    assert list(target.parent.iterdir()) == [target]


# -- configuration ---------------------------------------------------------------------


def test_environment_instead_of_flags(kree_server, new_job):
    cert, key = kree_server.frontend_files("portal")
    env = clean_env(KREE_URL=url(kree_server), KREE_CERT=str(cert), KREE_KEY=str(key),
                    KREE_CA=str(kree_server.ca_path))
    assert "state: NEW" in ok(run_kree("status", new_job, env=env))
    # A flag wins over its variable.
    env["KREE_URL"] = "https://localhost:1"
    ok(run_kree("--url", url(kree_server), "status", new_job, env=env))
    # Options after the command work too.
    ok(run_kree("status", new_job, "--url", url(kree_server), env=env))


def dev_state_dir(server, base: Path) -> Path:
    """A state directory laid out like kreed --dev's, with portal's files as dev's."""
    cert, key = server.frontend_files("portal")
    frontends = base / "certs" / "frontends"
    frontends.mkdir(parents=True)
    (frontends / "dev.pem").symlink_to(cert)
    (frontends / "dev.key").symlink_to(key)
    (base / "certs" / "ca.pem").symlink_to(server.ca_path)
    return base


def test_state_dir_alone(kree_server, new_job, tmp_path):
    state_dir = dev_state_dir(kree_server, tmp_path / "state")
    ok(run_kree("--state-dir", str(state_dir), "--url", url(kree_server), "status", new_job))
    env = clean_env(KREE_STATE_DIR=str(state_dir), KREE_URL=url(kree_server))
    ok(run_kree("status", new_job, env=env))
    # Without --url it means https://localhost:8443, where nothing listens here.
    result = run_kree("--state-dir", str(state_dir), "status", new_job)
    assert result.returncode == 1 and "localhost:8443" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_certificate_configuration(kree_server, tmp_path):
    result = run_kree("--url", url(kree_server), "list")
    assert result.returncode == 2
    for name in ("--cert", "KREE_CERT", "--key", "KREE_KEY", "--ca", "KREE_CA"):
        assert name in result.stderr
    cert, _ = kree_server.frontend_files("portal")
    result = run_kree("--url", url(kree_server), "--cert", str(cert), "--ca",
                      str(kree_server.ca_path), "list")
    assert result.returncode == 2
    assert "--key" in result.stderr and "--cert" not in result.stderr
    result = run_kree("--state-dir", str(tmp_path / "empty"), "list")
    assert result.returncode == 2 and "dev.pem" in result.stderr


def test_certificate_of_another_ca_is_refused_without_a_traceback(kree_server, tmp_path):
    stranger = pki.issue(pki.create_ca(), "stranger", client=True)
    cert, key = tmp_path / "stranger.pem", tmp_path / "stranger.key"
    pki.save(stranger, cert, key)
    result = run_kree("--url", url(kree_server), "--cert", str(cert), "--key", str(key),
                      "--ca", str(kree_server.ca_path), "list")
    message = refused(result, "tls_refused")
    assert "TLS handshake refused" in message


def test_server_not_trusted_by_the_given_ca(kree_server, tmp_path):
    other = pki.create_ca("Other CA")
    ca = tmp_path / "other-ca.pem"
    pki.save(other, ca, tmp_path / "other-ca.key")
    cert, key = kree_server.frontend_files("portal")
    result = run_kree("--url", url(kree_server), "--cert", str(cert), "--key", str(key),
                      "--ca", str(ca), "list")
    assert "cannot verify the server certificate" in refused(result, "tls_server_unverified")
