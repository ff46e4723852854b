"""
Contained jobs (kree.sandbox, kree.engine.sandbox), end to end: an R and an
Octave actor each try what an outside probe did with the default policy
(read the CA key, the database and another frontend's product, write
outside their job, reach kreed's port and a listener on loopback, fork
without bound, allocate past the memory limit).  Each attempt fails inside
the job, the job reports it, and nothing outside changed.

The server's state directory is under /var/tmp, not /tmp: an engine that
changed account sees its job directory at /tmp, which would hide a state
directory there for another reason than the sandbox's rules.
"""

import os
import shutil
import socket
import tempfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

import psutil
import pytest

from live import LiveKree, wait_for_state
from waiting import wait_for

HAVE_R = shutil.which("Rscript") is not None
HAVE_OCTAVE = shutil.which("octave-cli") is not None or shutil.which("octave") is not None
needs_r = pytest.mark.skipif(not HAVE_R and not os.environ.get("CI"), reason="needs Rscript")
needs_octave = pytest.mark.skipif(not HAVE_OCTAVE and not os.environ.get("CI"),
                                  reason="needs GNU Octave")


def script_workflow(actor_class: str, code: str, name: str = "probe") -> bytes:
    """A MoML model whose one language actor runs C{code}; Display shows what it printed."""
    return (
        '<?xml version="1.0"?>\n'
        f'<entity name="{name}" class="ptolemy.actor.TypedCompositeActor">'
        '<property name="SDF Director" class="ptolemy.domains.sdf.kernel.SDFDirector">'
        '<property name="iterations" class="ptolemy.data.expr.Parameter" value="1"/></property>'
        f'<entity name="Code" class="{actor_class}">'
        f'<property name="expression" class="ptolemy.kernel.util.StringAttribute" '
        f'value={quoteattr(code)}/></entity>'
        '<entity name="Display" class="ptolemy.actor.lib.gui.Display"/>'
        '<relation name="r" class="ptolemy.actor.TypedIORelation"/>'
        '<link port="Code.output" relation="r"/><link port="Display.input" relation="r"/>'
        '</entity>').encode()


R = "org.ecoinformatics.seek.R.RExpression"
OCTAVE = "ptolemy.matlab.Expression"


@pytest.fixture(scope="module")
def server():
    base = Path(tempfile.mkdtemp(prefix="kree-sandbox-", dir="/var/tmp"))
    server = LiveKree(base)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def listener():
    """A TCP listener on loopback that must never hear from a job."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def jobs_processes(server) -> list:
    """The processes of this server's jobs (those the engine account runs included)."""
    found = []
    for process in psutil.process_iter():
        try:
            job_id = process.environ().get("KREE_JOB_ID")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if job_id and (server.state_dir / "jobs" / job_id).is_dir():
            found.append(process)
    return found


def run(server, frontend: str, actor_class: str, code: str, resources=None) -> dict:
    if resources and "processes" in resources:
        # The process limit counts the whole account's: let an earlier bomb's children end.
        wait_for(lambda: not jobs_processes(server), "the earlier jobs' processes to end")
    client = server.client(frontend)
    uri = client.post("/v1/workflows", body=script_workflow(actor_class, code),
                      headers={"Content-Type": "application/xml"}).json["uri"]
    body = {"workflow": uri, "queue": True}
    if resources:
        body["resources"] = resources
    reply = client.post("/v1/jobs", body)
    assert reply.status == 201, reply.body
    job = wait_for_state(client, reply.json["id"], ["FINISHED", "FAILED", "ABORTED"])
    messages = client.get(f"/v1/jobs/{job['id']}/messages").json["messages"]
    return {**job, "text": "\n".join(m["text"] for m in messages)}


def other_frontends_product(server) -> Path:
    """A product of portal's job, written by R: what gateway's jobs try to read."""
    job = run(server, "portal", R, 'writeLines("portal-secret", "products/secret.txt"); cat("ok")')
    assert job["state"] == "FINISHED", job
    (path,) = server.state_dir.glob(f"jobs/{job['id']}/products/secret.txt")
    return path


def attempts(server, listener_port: int, product: Path, outside: Path) -> dict[str, str]:
    return {
        "ca-key": str(server.config.tls_path("ca").with_name("ca.key")),
        "database": str(server.state_dir / "kree.db"),
        "product": str(product),
        "outside": str(outside),
        "kreed": str(server.port),
        "listener": str(listener_port),
    }


def r_probe(paths: dict[str, str]) -> str:
    return "\n".join([
        'try_it <- function(what, f) { r <- tryCatch({ f(); "ALLOWED" },',
        '  error = function(e) paste("refused:", conditionMessage(e)),',
        '  warning = function(w) paste("refused:", conditionMessage(w)))',
        '  cat(what, r, "\\n") }',
        f'try_it("read-ca-key", function() readLines("{paths["ca-key"]}"))',
        f'try_it("read-database", function() readBin("{paths["database"]}", "raw", 16))',
        f'try_it("read-product", function() readLines("{paths["product"]}"))',
        f'try_it("write-outside", function() writeLines("x", "{paths["outside"]}"))',
        'try_it("write-system", function() writeLines("x", "/usr/kree-probe"))',
        f'try_it("connect-kreed", function() close(socketConnection("127.0.0.1", '
        f'{paths["kreed"]}, open = "r+", blocking = TRUE, timeout = 3)))',
        f'try_it("connect-listener", function() close(socketConnection("127.0.0.1", '
        f'{paths["listener"]}, open = "r+", blocking = TRUE, timeout = 3)))',
        'try_it("fork-bomb", function() { for (i in 1:400) if (system("sleep 1 &") != 0) '
        'stop("fork failed after ", i - 1, " processes") })',
        'try_it("allocate", function() { x <- numeric(2e8); x[1] <- 1 })',
    ])


def octave_probe(paths: dict[str, str]) -> str:
    def guarded(what: str, attempt: str) -> str:
        # An attempt that raises (system() that cannot start a shell) is refused too.
        return f'try, {attempt} catch e, printf("{what} refused: %s\\n", e.message); end'

    def shell(what: str, command: str) -> str:
        # system() answers the shell's status: anything but 0 is a refusal.
        return guarded(what, f'[s, out] = system("{command} 2>&1"); if s == 0, '
                             f'printf("{what} ALLOWED\\n"); else printf("{what} refused: %s\\n", '
                             f'strtrim(out)); end')

    def fopen_try(what: str, path: str, mode: str) -> str:
        return guarded(what, f'[f, msg] = fopen("{path}", "{mode}"); if f >= 0, fclose(f); '
                             f'printf("{what} ALLOWED\\n"); else printf("{what} refused: %s\\n", '
                             f'msg); end')

    return "\n".join([
        fopen_try("read-ca-key", paths["ca-key"], "r"),
        fopen_try("read-database", paths["database"], "r"),
        fopen_try("read-product", paths["product"], "r"),
        fopen_try("write-outside", paths["outside"], "w"),
        fopen_try("write-system", "/usr/kree-probe", "w"),
        shell("connect-kreed", f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{paths['kreed']}'"),
        shell("connect-listener", f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{paths['listener']}'"),
        guarded("fork-bomb", 'for i = 1:400, if system("sleep 1 &") != 0, '
                             'error("fork failed after %d processes", i - 1); end; end; '
                             'printf("fork-bomb ALLOWED\\n");'),
        'try, x = zeros(2e8, 1); x(1) = 1; printf("allocate ALLOWED\\n"); '
        'catch e, printf("allocate refused: %s\\n", e.message); end',
    ])


PROBES = ("read-ca-key", "read-database", "read-product", "write-outside", "write-system",
          "connect-kreed", "connect-listener", "fork-bomb", "allocate")


def check_contained(job: dict, outside: Path, listener, product: Path) -> None:
    assert job["state"] == "FINISHED", job
    lines = {line.split(" ", 1)[0]: line for line in job["text"].splitlines() if line.strip()}
    for probe in PROBES:
        assert probe in lines, (probe, job["text"])
        assert "refused" in lines[probe] and "ALLOWED" not in lines[probe], (probe, job["text"])
    # Nothing outside changed: no file written, no connection heard.
    assert not outside.exists()
    assert not Path("/usr/kree-probe").exists()
    assert product.read_text() == "portal-secret\n"
    with pytest.raises(BlockingIOError):
        listener.accept()


@needs_r
def test_an_r_actor_touches_only_its_own_job(server, listener, tmp_path):
    product = other_frontends_product(server)
    outside = server.base / "written-by-a-job"
    paths = attempts(server, listener.getsockname()[1], product, outside)
    job = run(server, "gateway", R, r_probe(paths),
              resources={"memory": "512M", "processes": 40})
    check_contained(job, outside, listener, product)


@needs_octave
def test_an_octave_actor_touches_only_its_own_job(server, listener, tmp_path):
    product = other_frontends_product(server)
    outside = server.base / "written-by-octave"
    paths = attempts(server, listener.getsockname()[1], product, outside)
    job = run(server, "gateway", OCTAVE, octave_probe(paths),
              resources={"memory": "1G", "processes": 40})
    check_contained(job, outside, listener, product)


@needs_r
def test_a_job_that_goes_over_its_cpu_time_fails_with_the_reason(server):
    job = run(server, "gateway", R, "repeat { x <- 1 }", resources={"cpu_time": 2})
    assert job["state"] == "FAILED", job
    assert "killed by SIGXCPU: it went over its CPU time limit" in job["error"], job


@needs_r
def test_a_job_works_in_its_own_directory_and_temporary_directory(server):
    job = run(server, "portal", R, 'writeLines("a", file.path(tempdir(), "t")); '
                                   'writeLines("b", "products/b.txt"); '
                                   'cat(readLines(file.path(tempdir(), "t")), Sys.getenv("TMPDIR"))')
    assert job["state"] == "FINISHED", job
    assert job["text"].startswith("a "), job
    (product,) = server.state_dir.glob(f"jobs/{job['id']}/products/b.txt")
    assert product.read_text() == "b\n"


@needs_r
def test_code_cannot_be_replaced_through_a_parameter(server):
    client = server.client("portal")
    uri = client.post("/v1/workflows", body=script_workflow(R, 'cat("trusted")', name="rstats"),
                      headers={"Content-Type": "application/xml"}).json["uri"]
    reply = client.post("/v1/jobs", {"workflow": uri,
                                     "parameters": {".rstats.Code.expression": 'system("id")'}})
    assert reply.status == 422, reply.body
    assert reply.json["error"]["code"] == "parameter_locked"
    assert reply.json["error"]["details"]["locked"] == [".rstats.Code.expression"]
    # Nor later, while the job is NEW; the timeout is no code and stays settable.
    job = client.post("/v1/jobs", {"workflow": uri}).json
    reply = client.patch(f"/v1/jobs/{job['id']}/parameters",
                         {".rstats.Code.expression": 'system("id")'})
    assert (reply.status, reply.json["error"]["code"]) == (422, "parameter_locked")
    assert client.patch(f"/v1/jobs/{job['id']}/parameters",
                        {".rstats.Code.timeout": "60"}).status == 200


def test_network_is_refused_unless_the_frontend_may_have_it(server):
    client = server.client("portal")
    uri = client.post("/v1/workflows", body=script_workflow(R, 'cat(1)'),
                      headers={"Content-Type": "application/xml"}).json["uri"]
    reply = client.post("/v1/jobs", {"workflow": uri, "resources": {"network": True}})
    assert reply.status == 422, reply.body
    assert reply.json["error"]["code"] == "network_not_allowed"
    reply = client.post("/v1/jobs", {"workflow": uri, "resources": {"processes": 10**6}})
    assert (reply.status, reply.json["error"]["details"]["field"]) == (422, "processes")


def test_service_info_and_status_show_the_sandbox(server):
    info = server.client("portal").get("/v1/service-info").json["sandbox"]
    assert info["mode"] == "landlock" and info["landlock_abi"] >= 1
    assert info["user"] == ("nobody" if os.geteuid() == 0 else None)
    status = server.admin("status")
    assert "sandbox: landlock" in status.stdout, status.stdout


def test_kreed_refuses_to_start_when_the_engine_account_is_missing(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("engines change account only when kreed runs as root")
    server = LiveKree(tmp_path, config_text='[sandbox]\nuser = "kree-no-such-account"\n')
    with pytest.raises(AssertionError, match="there is no account 'kree-no-such-account'"):
        server.start()


def test_the_listener_hears_a_connection_from_outside_a_job(listener):
    """The listener fixture itself: what the jobs' checks rely on can fail."""
    peer = socket.create_connection(listener.getsockname(), timeout=5)
    try:
        wait_for(lambda: _accepts(listener), "the connection from outside a job")
    finally:
        peer.close()


def _accepts(sock) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def r_files_probe(paths: dict[str, str]) -> str:
    """The file-system part of L{r_probe}."""
    return "\n".join(line for line in r_probe(paths).splitlines()
                     if not any(word in line for word in ("connect-", "fork-bomb", "allocate")))


FILE_PROBES = ("read-ca-key", "read-database", "read-product", "write-outside", "write-system")


@needs_r
def test_on_slurm_a_job_touches_only_its_own_files():
    from slurm_cluster import SLURM_CONFIG, require_slurm

    require_slurm()
    base = Path(tempfile.mkdtemp(prefix="kree-sandbox-slurm-", dir="/var/tmp"))
    on_slurm = LiveKree(base, config_text=SLURM_CONFIG)
    on_slurm.start()
    try:
        product = other_frontends_product(on_slurm)  # a local job's, on this server
        outside = base / "written-on-slurm"
        paths = attempts(on_slurm, 1, product, outside)
        job = run(on_slurm, "gateway", R, r_files_probe(paths), resources={"backend": "slurm"})
        assert job["state"] == "FINISHED", job
        lines = {line.split(" ", 1)[0]: line for line in job["text"].splitlines()}
        for probe in FILE_PROBES:
            assert "refused" in lines.get(probe, ""), (probe, job["text"])
        assert not outside.exists() and product.read_text() == "portal-secret\n"
    finally:
        on_slurm.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_feasibility_says_what_the_sandbox_refuses(server):
    client = server.client("portal")
    uri = client.post("/v1/workflows", body=script_workflow(R, 'cat(1)', name="rstats"),
                      headers={"Content-Type": "application/xml"}).json["uri"]
    answer = client.post("/v1/feasibility", {
        "workflow": uri, "resources": {"network": True},
        "parameters": {".rstats.Code.expression": "1"}}).json
    assert not answer["feasible"]
    assert any(r.startswith("network: jobs of frontend 'portal' may not have network")
               for r in answer["reasons"]), answer
    assert any(r.startswith("parameter .rstats.Code.expression: holds code")
               for r in answer["reasons"]), answer


@needs_r
def test_a_frontend_allowed_network_gets_it(tmp_path, listener):
    """The other side of the network rule: the listener does hear a job that may have network."""
    base = Path(tempfile.mkdtemp(prefix="kree-sandbox-net-", dir="/var/tmp"))
    allowed = LiveKree(base, config_text='[sandbox]\nnetwork_frontends = ["portal"]\n')
    allowed.start()
    try:
        port = listener.getsockname()[1]
        connect = (f'con <- socketConnection("127.0.0.1", {port}, open = "r+", blocking = TRUE, '
                   'timeout = 5); close(con); cat("connected")')
        job = run(allowed, "portal", R, connect, resources={"network": True})
        assert job["state"] == "FINISHED" and job["text"] == "connected", job
        wait_for(lambda: _accepts(listener), "the job's connection")
        # Without asking, the same frontend's job has none.
        job = run(allowed, "portal", R, connect)
        assert job["state"] == "FAILED" and "cannot be opened" in job["error"], job
    finally:
        allowed.stop()
        shutil.rmtree(base, ignore_errors=True)
