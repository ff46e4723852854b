"""
CWL jobs end to end through /v1 on the local backend: a real kreed (as the
tests run it: root, so engines run as the sandbox's account under Landlock)
running real cwltool.  Uploads by media type, parameters as the CWL inputs,
a job that finishes with its output object in the results and its Files as
products, a failing step, a stop, and the sandbox around cwltool and node.

The state directory is under /var/tmp, as in test_sandbox.py, so that what
a job cannot read it cannot read because of the sandbox's rules.
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kree.jobs import _fits_cwl_type
from live import REPO_WORKFLOWS, LiveKree, job_processes, wait_for_state
from waiting import wait_for

CWL = REPO_WORKFLOWS / "cwl"
ENDED = ("FINISHED", "FAILED", "ABORTED")


@pytest.fixture(scope="module")
def server():
    base = Path(tempfile.mkdtemp(prefix="kree-cwl-", dir="/var/tmp"))
    server = LiveKree(base)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def portal(server):
    client = server.client("portal")
    yield client
    for job in client.get("/v1/jobs?limit=500").json["jobs"]:
        if job["state"] not in ("NEW", *ENDED):
            client.post(f"/v1/jobs/{job['id']}/kill")


def upload(client, data: bytes, media_type: str = "application/cwl+yaml") -> str:
    reply = client.post("/v1/workflows", body=data, headers={"Content-Type": media_type})
    assert reply.status in (200, 201), reply.body
    return reply.json["uri"]


def create(client, workflow: str | bytes, *, parameters=None, queue=True) -> dict:
    data = workflow if isinstance(workflow, bytes) else (CWL / workflow).read_bytes()
    body = {"workflow": upload(client, data), "queue": queue}
    if parameters is not None:
        body["parameters"] = parameters
    reply = client.post("/v1/jobs", body)
    assert reply.status == 201, reply.body
    return reply.json


def messages(client, job_id: str) -> list[str]:
    return [m["text"] for m in client.get(f"/v1/jobs/{job_id}/messages").json["messages"]]


def test_a_pipeline_finishes_with_its_output_object_and_products(server, portal):
    job = create(portal, "pipeline.cwl", parameters={"message": "to be or not"})
    state = wait_for_state(portal, job["id"], ENDED)
    assert state["state"] == "FINISHED", (portal.get(f"/v1/jobs/{job['id']}").json,
                                          messages(portal, job["id"]))
    assert state["progress"] == 1.0
    results = portal.get(f"/v1/jobs/{job['id']}/results").json
    assert results["complete"] is True
    words = results["outputs"]["words"]
    assert words["class"] == "File" and words["product"] == "words.txt"
    assert words["href"] == f"/v1/jobs/{job['id']}/products/words.txt"
    assert "path" not in words and "location" not in words  # no server paths
    assert {p["name"] for p in results["products"]} == {"greeting.txt", "words.txt"}
    assert portal.get(words["href"]).body.strip() == b"4"
    assert portal.get(results["outputs"]["greeting"]["href"]).body == b"to be or not\n"
    texts = messages(portal, job["id"])
    assert "step echo started" in texts and "step count completed success" in texts
    events = portal.get(f"/v1/jobs/{job['id']}/events").json["events"]
    assert {e["data"]["name"] for e in events if e["type"] == "job.product"} == {
        "greeting.txt", "words.txt"}
    # The engine ran as the sandbox's account, not as kreed's.
    if os.getuid() == 0:
        product = server.state_dir / "jobs" / job["id"] / "products" / "words.txt"
        assert product.stat().st_uid == pwd.getpwnam("nobody").pw_uid


def test_parameters_are_the_cwl_inputs(portal):
    job = create(portal, "echo.cwl", queue=False)
    path = f"/v1/jobs/{job['id']}/parameters"
    listed = portal.get(path).json
    assert listed["defaults"] == {"message": "Hello from KREE"}
    assert listed["types"] == {"message": "string"}
    assert listed["docs"] == {"message": "What to write."}
    assert listed["parameters"] == {}
    reply = portal.patch(path, {"nope": "x"})
    assert reply.status == 422 and reply.error == "invalid_parameter"
    assert portal.patch(path, {"message": "set by PATCH"}).json["parameters"] == {
        "message": "set by PATCH"}
    assert portal.post(f"/v1/jobs/{job['id']}/queue").status == 200
    assert wait_for_state(portal, job["id"], ENDED)["state"] == "FINISHED"
    assert portal.get(f"/v1/jobs/{job['id']}/products/greeting.txt").body == b"set by PATCH\n"
    # Values are checked against the input's type, naming it.
    reply = portal.patch(path, {"message": 42})
    assert reply.status == 422 and reply.error == "invalid_parameter"
    assert reply.json["error"]["details"] == {"parameter": "message", "type": "string"}
    # Unknown names are refused at creation too.
    reply = portal.post("/v1/jobs", {"workflow": upload(portal, (CWL / "echo.cwl").read_bytes()),
                                     "parameters": {"mesage": "typo"}})
    assert reply.status == 422 and reply.error == "invalid_parameter"


@pytest.mark.parametrize("declared, value, fits", [
    ("string", "x", True), ("string", 1, False), ("int", 3, True), ("int", 3.5, False),
    ("int", True, False), ("double", 3, True), ("boolean", False, True), ("long", "3", False),
    ("string?", "x", True), ("int[]", [1, 2], True), ("int[]", [1, "2"], False),
    ("enum(red, green)", "green", True), ("enum(red, green)", "blue", False),
    ("int | string", "x", True), ("int | boolean", "x", False), ("File", "/etc/passwd", False),
    ("(int | string)[]", [1, "a"], True), ("record", ["anything"], True),
])
def test_parameter_values_against_cwl_types(declared, value, fits):
    assert _fits_cwl_type(declared, value) is fits


def test_a_failing_step_fails_the_job_with_the_reason(portal):
    job = create(portal, "fail.cwl")
    assert wait_for_state(portal, job["id"], ENDED)["state"] == "FAILED"
    record = portal.get(f"/v1/jobs/{job['id']}").json
    assert "step broken failed (exit status 3)" in record["error"]
    assert "step broken completed permanentFail" in messages(portal, job["id"])


def test_stop_of_a_long_step_ends_the_job_aborted(server, portal):
    job = create(portal, "sleep.cwl")
    wait_for_state(portal, job["id"], "RUNNING")

    def sleeping():
        return [p for p in job_processes(job["id"]) if p.name() == "sleep"]

    wait_for(sleeping, "the step's sleep to run", timeout=120)
    assert portal.post(f"/v1/jobs/{job['id']}/stop").status == 200
    assert wait_for_state(portal, job["id"], ENDED)["state"] == "ABORTED"
    wait_for(lambda: not job_processes(job["id"]), "the job's processes to end", timeout=60)
    # The step's working directory (under tmpout/) is cleaned up after the engine.
    wait_for(lambda: not (server.state_dir / "jobs" / job["id"] / "tmpout").exists(),
             "cwltool's step directories to go")
    end = [e for e in portal.get(f"/v1/jobs/{job['id']}/events").json["events"]
           if e["type"] == "job.state"][-1]
    assert end["data"]["to"] == "ABORTED"


def test_pause_resume_and_kill_act_on_cwltool_and_its_tools(portal):
    job = create(portal, "sleep.cwl")

    def sleeping():
        return [p for p in job_processes(job["id"]) if p.name() == "sleep"]

    (sleep,) = wait_for(sleeping, "the step's sleep to run", timeout=120)
    assert portal.post(f"/v1/jobs/{job['id']}/pause").json["state"] == "PAUSED"
    wait_for(lambda: all(p.status() == "stopped" for p in job_processes(job["id"])),
             "every process of the job to be stopped")
    assert portal.post(f"/v1/jobs/{job['id']}/resume").json["state"] == "RUNNING"
    wait_for(lambda: sleep.status() != "stopped", "the step to run again")
    assert portal.post(f"/v1/jobs/{job['id']}/kill").json["state"] == "ABORTED"
    wait_for(lambda: not job_processes(job["id"]), "the job's processes to end", timeout=60)


def test_cwltool_and_node_work_in_the_sandbox_and_it_holds(server, portal):
    job = create(portal, "js.cwl")
    assert wait_for_state(portal, job["id"], ENDED)["state"] == "FINISHED", messages(
        portal, job["id"])
    assert portal.get(f"/v1/jobs/{job['id']}/products/loud.txt").body == b"SHOUT\n"
    # A tool that reads kreed's CA key is refused by the sandbox: the step fails.
    secret = server.state_dir / "certs" / "ca.key"
    assert secret.exists()
    thief = f"""cwlVersion: v1.2
class: CommandLineTool
baseCommand: [cat, {secret}]
inputs: []
outputs:
  stolen: {{type: stdout}}
stdout: stolen.txt
""".encode()
    job = create(portal, thief)
    assert wait_for_state(portal, job["id"], ENDED)["state"] == "FAILED"
    stolen = server.state_dir / "jobs" / job["id"] / "products" / "stolen.txt"
    assert not stolen.exists() or b"PRIVATE KEY" not in stolen.read_bytes()


def test_uploads_are_checked_by_media_type(portal):
    data = (CWL / "echo.cwl").read_bytes()
    for media_type in ("application/cwl", "application/yaml", "text/yaml", "application/x-yaml"):
        assert portal.post("/v1/workflows", body=data,
                           headers={"Content-Type": media_type}).status in (200, 201)
    packed = b'{"cwlVersion": "v1.2", "class": "CommandLineTool", "baseCommand": "true", ' \
             b'"inputs": [], "outputs": []}'
    assert portal.post("/v1/workflows", body=packed,
                       headers={"Content-Type": "application/json"}).status in (200, 201)
    reply = portal.post("/v1/workflows", body=b"just: yaml\n",
                        headers={"Content-Type": "application/yaml"})
    assert reply.status == 422 and reply.error == "invalid_workflow"
    assert "cwlVersion" in reply.json["error"]["message"]
    reply = portal.post("/v1/workflows", body=b"!!python/object:os.system ls\n",
                        headers={"Content-Type": "application/yaml"})
    assert reply.status == 422 and reply.error == "invalid_workflow"
    reply = portal.post("/v1/workflows", body=data, headers={"Content-Type": "text/plain"})
    assert reply.status == 415
    # A CWL document sent as XML is not MoML.
    reply = portal.post("/v1/workflows", body=data, headers={"Content-Type": "application/xml"})
    assert reply.status == 422 and reply.error == "invalid_workflow"


def test_an_invalid_document_is_refused_at_creation(portal):
    bad = b"cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: echo\n" \
          b"inputs: {x: strin}\noutputs: []\n"
    reply = portal.post("/v1/jobs", {"workflow": upload(portal, bad)})
    assert reply.status == 422 and reply.error == "invalid_workflow"
    assert "strin" in " ".join(reply.json["error"]["details"]["problems"])


def test_a_cwl_job_is_re_adopted_after_a_restart(tmp_path):
    """kreed stops while the step runs; the next kreed follows the engine to its end."""
    server = LiveKree(tmp_path, frontends=("portal",)).start()
    try:
        portal = server.client("portal")
        job = create(portal, "sleep.cwl", parameters={"seconds": 10})
        wait_for(lambda: [p for p in job_processes(job["id"]) if p.name() == "sleep"],
                 "the step's sleep to run", timeout=120)
        assert server.stop() == 0
        assert job_processes(job["id"]), "the engine outlives kreed"
        server.start()
        assert wait_for_state(portal, job["id"], ENDED)["state"] == "FINISHED"
        texts = messages(portal, job["id"])
        assert "Final process status is success" in texts
    finally:
        server.stop()


def test_the_kree_client_submits_a_cwl_file(server):
    """`kree submit FILE.cwl` uploads it as CWL; --param sets an input by its id."""
    cert, key = server.frontend_files("portal")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KREE_")}
    result = subprocess.run(
        [sys.executable, "-m", "kree.cli", "--url", f"https://localhost:{server.port}",
         "--cert", str(cert), "--key", str(key), "--ca", str(server.ca_path),
         "submit", str(CWL / "echo.cwl"), "--param", "message=from the client", "--queue",
         "--wait"], capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    job_id = result.stdout.split()[0]
    portal = server.client("portal")
    assert portal.get(f"/v1/jobs/{job_id}/state").json["state"] == "FINISHED"
    assert portal.get(f"/v1/jobs/{job_id}/products/greeting.txt").body == b"from the client\n"
