"""
The defects an outside probe found (issue 14), each driven against a live
kreed with real clients: bad JSON that used to hang or 500, refusals that
were not audited, slow and oversized request heads, limits on inputs and
resources, default walltimes, what one frontend could learn of another's
work, failed staging, and global options after the command.
"""

import json
import socket
import ssl
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from twisted.internet.testing import StringTransport

from kree.admin.server import AdminProtocol
from kree.store.engine import create_engine
from live import (LiveKree, hold_the_queue, job_processes, kill_active_jobs, submit,
                  wait_for_state, write_issued)
from test_api import MOML, XML
from waiting import wait_for

HEAD_TIMEOUT = 3

CONFIG = f"""
[server]
request_head_timeout_seconds = {HEAD_TIMEOUT}
[supervisor]
max_running = 1
stop_grace_seconds = 2
monitor_interval_seconds = 0.2
default_walltime_seconds = 600
max_walltime_seconds = 3600
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One engine slot, held by the "holder" frontend: queued jobs stay QUEUED."""
    live = LiveKree(tmp_path_factory.mktemp("hardening"),
                    frontends=("portal", "gateway", "holder"), config_text=CONFIG).start()
    holder = hold_the_queue(live)
    yield live
    # Engines outlive kreed (they are re-adopted at its next start): kill every
    # job that might still get one before the slot is freed.
    for name in ("portal", "gateway"):
        kill_active_jobs(live.client(name))
    holder.post(f"/v1/jobs/{holder.job_id}/kill")
    wait_for_state(holder, holder.job_id, "ABORTED")
    assert live.stop() == 0, live.log


@pytest.fixture(scope="module")
def portal(server):
    return server.client("portal")


@pytest.fixture(scope="module")
def gateway(server):
    return server.client("gateway")


@pytest.fixture(scope="module")
def workflow(portal):
    reply = portal.post("/v1/workflows", body=MOML, headers=XML)
    assert reply.status in (200, 201)
    return reply.json["uri"]


def raw_post(client, path: str, text: str, method: str = "POST"):
    """Send a JSON text exactly as written (escapes and all)."""
    return client.request(method, path, body=text.encode(),
                           headers={"Content-Type": "application/json"})


def job_count(client) -> int:
    return len(client.get("/v1/jobs?limit=500").json["jobs"])


def audit_rows(server, **where):
    engine = create_engine(server.config.store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT actor, action, outcome, status, details FROM audit_log ORDER BY id"))
            found = [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()
    for row in found:
        if isinstance(row["details"], str):
            row["details"] = json.loads(row["details"])
    return [r for r in found if all(r[k] == v for k, v in where.items())]


def wait_for_audit(server, count: int, **where):
    """The audit rows matching C{where}, once there are C{count} (written after the answer)."""
    deadline = time.monotonic() + 30
    while True:
        rows = audit_rows(server, **where)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


# -- 1. lone surrogates -------------------------------------------------------------


@pytest.mark.parametrize("template, field", [
    ('{{"workflow": "{w}", "parameters": {{".hello.Ramp.init": "\\ud800"}}}}',
     "parameters..hello.Ramp.init"),
    ('{{"workflow": "{w}", "parameters": {{".hello.Ramp.\\ud800": 1}}}}',
     "parameters..hello.Ramp.\\ud800"),
    ('{{"workflow": "https://example.org/\\udfff.xml"}}', "workflow"),
    ('{{"workflow": "{w}", "parameters": {{".hello.Ramp.init": ["a", "\\udc00"]}}}}',
     "parameters..hello.Ramp.init[1]"),
])
def test_lone_surrogates_are_refused_and_nothing_is_stored(portal, workflow, template, field):
    before = job_count(portal)
    reply = raw_post(portal, "/v1/jobs", template.format(w=workflow))
    assert reply.status == 400, reply.body
    assert reply.error == "invalid_request"
    assert reply.json["error"]["details"]["field"] == field
    assert "surrogate" in reply.json["error"]["message"]
    assert job_count(portal) == before


def test_surrogates_in_reasons_and_subscription_urls_are_refused(portal, workflow):
    job = portal.post("/v1/jobs", {"workflow": workflow}).json
    reply = raw_post(portal, f"/v1/jobs/{job['id']}/queue", '{"reason": "\\ud800"}')
    assert reply.status == 400 and reply.json["error"]["details"]["field"] == "reason"
    assert portal.get(f"/v1/jobs/{job['id']}").json["state"] == "NEW"
    reply = raw_post(portal, "/v1/subscriptions",
                     '{"url": "https://example.org/\\ud800", "secret": "s3cret-s3cret"}')
    assert reply.status == 400 and reply.error == "invalid_request"
    # The job stays readable: nothing half-written.
    assert portal.get(f"/v1/jobs/{job['id']}/parameters").status == 200


# -- 2. non-finite numbers and bounds -------------------------------------------------


@pytest.mark.parametrize("resources", [
    '{"walltime": Infinity}', '{"walltime": -Infinity}', '{"input_timeout": NaN}',
    '{"walltime": 1e400}', '{"memory": 1e999}',
])
def test_non_finite_numbers_are_malformed_json(portal, workflow, resources):
    reply = raw_post(portal, "/v1/jobs", f'{{"workflow": "{workflow}", "resources": {resources}}}')
    assert reply.status == 400 and reply.error == "malformed_json", reply.body


def test_nan_is_not_a_parameter_value(portal, workflow):
    reply = raw_post(portal, "/v1/jobs",
                     f'{{"workflow": "{workflow}", "parameters": {{".hello.Ramp.init": NaN}}}}')
    assert reply.status == 400 and reply.error == "malformed_json"
    job = portal.post("/v1/jobs", {"workflow": workflow}).json
    reply = raw_post(portal, f"/v1/jobs/{job['id']}/resources", '{"walltime": Infinity}', "PUT")
    assert reply.status == 400 and reply.error == "malformed_json"


@pytest.mark.parametrize("resources, field", [
    ({"walltime": 10**30}, "walltime"),
    ({"walltime": 3601}, "walltime"),  # over [supervisor] max_walltime_seconds
    ({"walltime": "400-00:00:00"}, "walltime"),
    ({"input_timeout": 10**12}, "input_timeout"),
    ({"memory": 10**30}, "memory"),
    ({"memory": "9" * 300 + "T"}, "memory"),
    ({"cpus": 5000}, "cpus"),
])
def test_resources_have_upper_bounds(portal, workflow, resources, field):
    reply = portal.post("/v1/jobs", {"workflow": workflow, "resources": resources})
    assert reply.status == 422 and reply.error == "invalid_resources", reply.body
    assert reply.json["error"]["details"]["field"] == field
    job = portal.post("/v1/jobs", {"workflow": workflow}).json
    reply = portal.put(f"/v1/jobs/{job['id']}/resources", resources)
    assert reply.status == 422 and reply.json["error"]["details"]["field"] == field


# -- 5. no run without an end ---------------------------------------------------------


def test_service_info_shows_the_walltime_limits(portal, workflow):
    limits = portal.get("/v1/service-info").json["limits"]
    assert limits["default_walltime_seconds"] == 600
    assert limits["max_walltime_seconds"] == 3600
    assert limits["max_inputs"] == 1000 and limits["max_parameters"] == 1000
    job = portal.post("/v1/jobs", {"workflow": workflow, "resources": {"walltime": 60}}).json
    assert job["resources"]["walltime"] == 60


def test_a_job_without_walltime_ends_at_the_default(tmp_path):
    """An endless model with no walltime asked is stopped at [supervisor] default_walltime."""
    live = LiveKree(tmp_path, config_text="""
[supervisor]
default_walltime_seconds = 2
monitor_interval_seconds = 0.2
stop_grace_seconds = 2
""").start()
    try:
        portal = live.client("portal")
        job = submit(portal, "sleep-loop.xml",
                     parameters={".sleeper.SDF Director.iterations": 1_000_000})
        assert "walltime" not in job["resources"]  # as asked; Slurm keeps its own default
        state = wait_for_state(portal, job["id"], ("FINISHED", "FAILED", "ABORTED"), timeout=120)
        assert state["state"] == "FAILED" and state["error"] == "walltime"
        assert state["running_seconds"] >= 2
        # The engine is stopped too (the FAILED record is committed first): stopping
        # kreed before that would leave it running, with nobody to end it.
        wait_for(lambda: not job_processes(job["id"]), "the engine ended after its walltime")
    finally:
        kill_active_jobs(live.client("portal"))
        assert live.stop() == 0, live.log


def test_walltime_settings_are_checked(tmp_path):
    from kree.config import load_config
    from kree.errors import ConfigError

    path = tmp_path / "kree.toml"
    path.write_text("[supervisor]\ndefault_walltime_seconds = 7200\nmax_walltime_seconds = 3600\n")
    with pytest.raises(ConfigError, match="default_walltime_seconds: must not exceed"):
        load_config(path)


# -- 9. inputs are limited ------------------------------------------------------------


def test_inputs_are_limited(portal, workflow):
    inputs = {f"in{i}": f"https://example.org/{i}" for i in range(1001)}
    reply = portal.post("/v1/jobs", {"workflow": workflow, "inputs": inputs})
    assert reply.status == 422 and reply.error == "invalid_input"
    assert reply.json["error"]["details"]["limit"] == 1000
    reply = portal.post("/v1/feasibility", {"workflow": workflow, "inputs": inputs})
    assert reply.status == 422 and reply.error == "invalid_input"


# -- 3. refusals are audited ------------------------------------------------------------


def test_refusals_are_audited_with_the_fingerprint(server, portal, tmp_path):
    from kree import pki
    stranger = pki.issue(server.load_ca(), "stranger", client=True)
    cert, key = write_issued(tmp_path, "stranger", stranger)
    from live import Client
    client = Client(server, cert, key)
    assert client.get("/v1/jobs").status == 403
    assert client.post("/v1/jobs", {"workflow": "https://example.org/w.xml"}).status == 403
    rows = wait_for_audit(server, 2, actor="unknown", status=403)
    assert len(rows) >= 2
    assert all(r["details"] == {"error": "unknown_frontend", "fingerprint": pki.fingerprint(stranger.certificate)}
               and r["outcome"] == "refused" for r in rows)

    big = b"[" + b"1," * 600_000 + b"1]"
    assert portal.post("/v1/jobs", body=big,
                       headers={"Content-Type": "application/json"}).status == 413
    rows = wait_for_audit(server, 1, actor="portal", status=413)
    assert rows and rows[-1]["details"]["error"] == "too_large"
    assert len(rows[-1]["details"]["fingerprint"]) == 64
    assert "AttributeError" not in server.log


# -- 8. slow and oversized request heads ---------------------------------------------------


def tls_socket(server, name="portal") -> ssl.SSLSocket:
    cert, key = server.frontend_files(name)
    context = ssl.create_default_context(cafile=str(server.ca_path))
    context.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_until_closed(sock: ssl.SSLSocket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the connection stayed open; got {data[:200]!r}")


def test_a_trickled_request_head_gets_408(server):
    sock = tls_socket(server)
    started = time.monotonic()
    sock.sendall(b"GET /v1/service-info HTTP/1.1\r\nHost: localhost\r\n")
    sock.settimeout(0.5)
    answer = b""
    # One header line every half second, for far longer than the head may take.
    deadline = started + HEAD_TIMEOUT + 60
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"X-Slow: 1\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            break
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            continue
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"request_timeout"' in answer
    assert time.monotonic() - started >= HEAD_TIMEOUT


@pytest.mark.parametrize("head", [
    b"GET /v1/service-info HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /v1/service-info HTTP/1.1\r\nHost: localhost\r\n"
    + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 900) for i in range(20)) + b"\r\n",
])
def test_oversized_request_heads_get_431(server, head):
    sock = tls_socket(server)
    sock.sendall(head)
    answer = read_until_closed(sock, time.monotonic() + 30)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"headers_too_large"' in answer


def test_expect_continue_with_a_body_too_large_gets_413_not_100(server):
    sock = tls_socket(server)
    sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 52428800\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    answer = read_until_closed(sock, time.monotonic() + 30)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"100 Continue" not in answer


def test_expect_continue_within_the_limit_still_continues(server, workflow):
    sock = tls_socket(server)
    body = json.dumps({"workflow": workflow}).encode()
    sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                 b"Expect: 100-continue\r\n\r\n" % len(body))
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(body)
    answer = read_until_closed(sock, time.monotonic() + 30)
    sock.close()
    assert b"HTTP/1.1 201 " in answer


# -- 10. nothing learnt of other frontends ---------------------------------------------------


def test_uploads_are_per_frontend(portal, gateway):
    document = MOML.replace(b'name="hello"', b'name="uploaded-twice"')
    first = portal.post("/v1/workflows", body=document, headers=XML)
    assert first.status == 201
    assert portal.post("/v1/workflows", body=document, headers=XML).status == 200
    # gateway cannot use portal's upload, nor tell that it exists
    reply = gateway.post("/v1/jobs", {"workflow": first.json["uri"]})
    assert reply.status == 422 and reply.error == "workflow_not_found"
    # ... not even through feasibility, which says what job creation says.
    verdict = gateway.post("/v1/feasibility", {"workflow": first.json["uri"]}).json
    assert not verdict["feasible"] and verdict["reasons"] == [
        f"workflow: no uploaded workflow {first.json['uri']}: upload it with POST /v1/workflows"]
    assert portal.post("/v1/feasibility", {"workflow": first.json["uri"]}).json["feasible"]
    assert gateway.post("/v1/workflows", body=document, headers=XML).status == 201
    assert gateway.post("/v1/jobs", {"workflow": first.json["uri"]}).status == 201


def test_queue_length_counts_only_own_jobs(portal, gateway, workflow):
    for _ in range(2):
        portal.post("/v1/jobs", {"workflow": workflow, "queue": True})
    assert gateway.post("/v1/workflows", body=MOML, headers=XML).status in (200, 201)
    mine = portal.post("/v1/feasibility", {"workflow": workflow}).json["queue_length"]
    theirs = gateway.post("/v1/feasibility", {"workflow": workflow}).json["queue_length"]
    assert mine >= 2 and theirs == 0


# -- 11 and 10: staging, on a server that runs jobs ----------------------------------------------


@pytest.fixture
def running_server(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "numbers.txt").write_text("1 2 3\n")
    live = LiveKree(tmp_path, config_text=f"""
[fetch]
file_roots = ["{data}"]
[supervisor]
max_running = 2
monitor_interval_seconds = 0.2
""").start()
    live.data = data
    yield live
    for name in ("portal", "gateway"):
        kill_active_jobs(live.client(name))
    assert live.stop() == 0, live.log


def test_a_failed_staging_marks_the_input_failed(running_server):
    portal = running_server.client("portal")
    uri = portal.post("/v1/workflows", body=MOML, headers=XML).json["uri"]
    job = portal.post("/v1/jobs", {"workflow": uri, "queue": True,
                                   "inputs": {"data": "https://127.0.0.1:1/nothing"}}).json
    state = wait_for_state(portal, job["id"], "FAILED")
    assert "127.0.0.1" in state["error"]
    assert portal.get(f"/v1/jobs/{job['id']}").json["inputs"]["data"]["status"] == "failed"


def test_cached_is_said_only_of_own_inputs(running_server):
    portal, gateway = running_server.client("portal"), running_server.client("gateway")
    uris = {c: c.post("/v1/workflows", body=MOML, headers=XML).json["uri"]
            for c in (portal, gateway)}
    data_uri = f"file://{running_server.data / 'numbers.txt'}"
    job = portal.post("/v1/jobs", {"workflow": uris[portal], "queue": True,
                                   "parameters": {".hello.SDF Director.iterations": 3},
                                   "inputs": {"numbers": data_uri}}).json
    assert job["id"], job
    wait_for_state(portal, job["id"], ("FINISHED", "FAILED"))
    deadline = time.monotonic() + 60
    while portal.get(f"/v1/jobs/{job['id']}").json["inputs"]["numbers"]["status"] != "staged":
        assert time.monotonic() < deadline, "the input was never staged"
        time.sleep(0.05)
    ask = {"inputs": {"numbers": data_uri}}
    assert portal.post("/v1/feasibility", {"workflow": uris[portal], **ask}).json["inputs"] == {
        "numbers": "cached"}
    assert gateway.post("/v1/feasibility", {"workflow": uris[gateway], **ask}).json["inputs"] == {
        "numbers": "to_fetch"}


# -- 11. the admin socket refuses a peer it cannot identify --------------------------------------


def test_admin_socket_refuses_a_peer_without_credentials():
    # A transport with no socket: SO_PEERCRED cannot be read.
    transport = StringTransport()
    protocol = AdminProtocol()
    protocol.makeConnection(transport)
    answer = json.loads(transport.value().decode().splitlines()[0])
    assert answer["ok"] is False and answer["error"]["code"] == "forbidden"
    assert transport.disconnecting
    transport.clear()
    protocol.dataReceived(b'{"command": "ping"}\n')
    assert transport.value() == b""


# -- 14. global options after the command ------------------------------------------------------


def test_global_options_after_the_command(server, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kree.admin", "status", "--json", "--config",
         str(server.config_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["daemon"] == "up"
    result = subprocess.run(
        [sys.executable, "-m", "kree.admin", "db", "current", "--json", "--config",
         str(server.config_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "current"
    # Before the command, as ever, and not hidden by the default after it.
    result = subprocess.run(
        [sys.executable, "-m", "kree.admin", "--json", "--config", str(server.config_path),
         "status"], capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout)["daemon"] == "up"
    cert, key = server.frontend_files("portal")
    result = subprocess.run(
        [sys.executable, "-c", "from kree.cli import main; main()", "list", "--json",
         "--url", f"https://localhost:{server.port}", "--cert", str(cert), "--key", str(key),
         "--ca", str(server.ca_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "jobs" in json.loads(result.stdout)


# -- 4. a check nobody waits for is killed ---------------------------------------------------------


def test_a_check_is_killed_when_its_client_goes_away(server, portal):
    from test_validation_limits import HUGE, _validate_children

    uri = portal.post("/v1/workflows", body=HUGE, headers=XML).json["uri"]
    body = json.dumps({"workflow": uri}).encode()
    sock = tls_socket(server)
    sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    deadline = time.monotonic() + 60
    while not (checkers := _validate_children(server.process.pid)):
        assert time.monotonic() < deadline, "the check did not start"
        time.sleep(0.02)
    sock.close()  # long before the check's 10 s limit
    for checker in checkers:
        checker.wait(timeout=8)  # psutil: raises TimeoutExpired if it lives on
    rows = wait_for_audit(server, 1, actor="portal", status=499)
    assert rows and rows[-1]["details"]["error"] == "client_gone"
