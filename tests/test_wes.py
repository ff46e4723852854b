"""
GA4GH WES 1.1 at /ga4gh/wes/v1 on a live kreed, through real mutual TLS:
every endpoint and its errors, each documented response checked against
the standard's OpenAPI document (tests/wes_schema.py), a MoML run submitted
as a multipart form reaching COMPLETE, paging, cancel, and isolation between
frontends.  A run is a KREE job: /v1 sees it too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from urllib3.filepost import encode_multipart_formdata

from kree.engines import ENGINE_KINDS
from kree.wes.states import is_system_error, wes_state_of
from kree.states import JobState
from live import REPO_WORKFLOWS, LiveKree, Reply, kill_active_jobs
from waiting import wait_for
from wes_schema import PREFIX, SPECS, check_response, validate

HELLO = (REPO_WORKFLOWS / "hello.xml").read_bytes()
SLEEPER = (REPO_WORKFLOWS / "sleep-loop.xml").read_bytes()
LONG = {".sleeper.SDF Director.iterations": 1_000_000}
TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}


class WesClient:
    """A frontend's client for /ga4gh/wes/v1; documented responses checked against WES 1.1."""

    def __init__(self, server: LiveKree, name: str) -> None:
        self.v1 = server.client(name)

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, check: bool = True) -> Reply:
        reply = self.v1.request(method, PREFIX + path, body=body, headers=headers, check=False)
        if check:
            check_response(method, PREFIX + path, reply.status,
                           reply.headers.get("content-type", ""), reply.body)
        return reply

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def submit(self, fields: list, *, check: bool = True) -> Reply:
        body, content_type = encode_multipart_formdata(fields, boundary=uuid.uuid4().hex)
        return self.request("POST", "/runs", body=body, headers={"Content-Type": content_type},
                            check=check)

    def run(self, workflow: bytes = HELLO, filename: str = "hello.xml", **fields) -> str:
        form = [("workflow_type", "MoML"), ("workflow_type_version", "1.0"),
                *((name, value) for name, value in fields.items()),
                ("workflow_attachment", (filename, workflow, "application/xml"))]
        reply = self.submit(form)
        assert reply.status == 200, reply.body
        return reply.json["run_id"]

    def state(self, run_id: str) -> str:
        return self.get(f"/runs/{run_id}/status").json["state"]

    def wait(self, run_id: str, states, timeout: float = 120) -> str:
        states = {states} if isinstance(states, str) else set(states)
        return wait_for(lambda: (s := self.state(run_id)) in states and s,
                        f"run {run_id} in {states}", timeout=timeout)


def refused(reply: Reply, status: int, words: str) -> None:
    assert reply.status == status, (reply.status, reply.body)
    body = reply.json
    validate("ErrorResponse", body)
    assert body["status_code"] == status and set(body) == {"msg", "status_code"}, body
    assert words in body["msg"], body


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LiveKree(tmp_path_factory.mktemp("kree-wes"), frontends=("portal", "gateway"),
                      config_text="[fetch]\nfile_roots = []\n").start()
    yield server
    kill_active_jobs(server.client("portal"))
    kill_active_jobs(server.client("gateway"))
    server.stop()


@pytest.fixture(scope="module")
def portal(server):
    return WesClient(server, "portal")


@pytest.fixture(scope="module")
def gateway(server):
    return WesClient(server, "gateway")


# -- service-info ------------------------------------------------------------------------


def test_service_info_is_a_full_wes_service_info(portal):
    reply = portal.get("/service-info")
    assert reply.status == 200
    info = reply.json
    assert info["type"] == {"group": "org.ga4gh", "artifact": "wes", "version": "1.1.0"}
    assert info["supported_wes_versions"] == ["1.1.0"]
    assert info["workflow_type_versions"]["MoML"] == {"workflow_type_version": ["1.0"]}
    # CWL is listed once kree.engines has a CWL kind, not before.
    assert ("CWL" in info["workflow_type_versions"]) == ("cwl" in ENGINE_KINDS)
    assert info["supported_filesystem_protocols"] == ["http", "https"]
    assert list(info["workflow_engine_versions"]) == ["kree"]
    assert info["default_workflow_engine_parameters"] == []
    assert set(info["system_state_counts"]) >= {"QUEUED", "RUNNING", "COMPLETE",
                                                "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}
    assert info["tags"]["frontend"] == "portal"
    page = portal.v1.get(info["auth_instructions_url"].split(f":{portal.v1.server.port}")[1],
                         check=False)
    assert page.status == 200 and page.headers["content-type"].startswith("text/plain")
    assert b"client certificate" in page.body


def test_state_counts_are_this_frontends(portal, gateway):
    before = gateway.get("/service-info").json["system_state_counts"]
    run_id = portal.run(SLEEPER, "sleep-loop.xml", workflow_params=json.dumps(LONG))
    portal.wait(run_id, "RUNNING")
    counts = portal.get("/service-info").json["system_state_counts"]
    assert counts["RUNNING"] >= 1
    assert gateway.get("/service-info").json["system_state_counts"] == before
    assert portal.request("POST", f"/runs/{run_id}/cancel").status == 200
    portal.wait(run_id, "CANCELED")


# -- a run from submission to COMPLETE ------------------------------------------------------


def test_a_moml_run_with_one_attachment_completes_with_its_outputs(portal):
    run_id = portal.run(workflow_params=json.dumps({".hello.Greeting.value": "Hello, WES"}),
                        tags=json.dumps({"project": "wes", "who": "test"}),
                        workflow_engine_parameters=json.dumps({"threads": "4", "x": None}))
    assert portal.wait(run_id, TERMINAL) == "COMPLETE"
    log = portal.get(f"/runs/{run_id}").json
    assert log["run_id"] == run_id and log["state"] == "COMPLETE"
    assert log["request"] == {
        "workflow_params": {".hello.Greeting.value": "Hello, WES"}, "workflow_type": "MoML",
        "workflow_type_version": "1.0", "tags": {"project": "wes", "who": "test"},
        "workflow_engine_parameters": {}, "workflow_url": "hello.xml"}
    run_log = log["run_log"]
    assert run_log["exit_code"] == 0 and run_log["name"] == "hello.xml"
    assert run_log["start_time"] <= run_log["end_time"]
    assert "run" in run_log["cmd"]
    # Unknown and null engine parameters are ignored, and the run log says so.
    assert any("'threads'" in line and "ignored" in line for line in run_log["system_logs"])
    assert any("'x' is null" in line for line in run_log["system_logs"])
    assert isinstance(log["outputs"], dict)
    results = portal.v1.get(f"/v1/jobs/{run_id}/results").json
    assert sorted(log["outputs"]) == sorted(p["name"] for p in results["products"])
    # stdout and stderr are URLs the client can fetch, as text.
    port = f":{portal.v1.server.port}"
    stdout = portal.v1.get(run_log["stdout"].split(port)[1], check=False)
    assert stdout.status == 200 and stdout.headers["content-type"].startswith("text/plain")
    stderr = portal.v1.get(run_log["stderr"].split(port)[1], check=False)
    assert b"'threads'" in stderr.body
    assert log["task_logs_url"].endswith(f"/runs/{run_id}/tasks")
    # The run is a KREE job.
    job = portal.v1.get(f"/v1/jobs/{run_id}").json
    assert job["state"] == "FINISHED"
    assert job["parameters"] == {".hello.Greeting.value": "Hello, WES"}


def test_outputs_are_the_runs_products_and_a_failed_workflow_is_an_executor_error(portal):
    run_id = portal.run((REPO_WORKFLOWS / "products.xml").read_bytes(), "products.xml")
    assert portal.wait(run_id, TERMINAL) == "COMPLETE"
    outputs = portal.get(f"/runs/{run_id}").json["outputs"]
    assert {"numbers.txt", "squares.csv", "summary.txt"} <= set(outputs)
    location = outputs["summary.txt"]["location"].split(f":{portal.v1.server.port}")[1]
    assert portal.v1.get(location).status == 200
    failed = portal.run((REPO_WORKFLOWS / "fail.xml").read_bytes(), "fail.xml")
    assert portal.wait(failed, TERMINAL) == "EXECUTOR_ERROR"
    log = portal.get(f"/runs/{failed}").json["run_log"]
    assert log["exit_code"] != 0 and log["system_logs"]


def test_workflow_url_names_an_attachment_in_a_subdirectory_and_type_is_any_case(portal):
    reply = portal.submit([("workflow_type", "moml"), ("workflow_type_version", "1.0"),
                           ("workflow_url", "./flows/hello.xml"),
                           ("workflow_attachment", ("flows/hello.xml", HELLO))])
    assert reply.status == 200, reply.body
    run_id = reply.json["run_id"]
    assert portal.wait(run_id, TERMINAL) == "COMPLETE"
    assert portal.get(f"/runs/{run_id}").json["request"]["workflow_url"] == "flows/hello.xml"


def test_a_job_made_under_v1_is_a_run_too(portal):
    uri = portal.v1.post("/v1/workflows", body=HELLO,
                         headers={"Content-Type": "application/xml"}).json["uri"]
    job = portal.v1.post("/v1/jobs", {"workflow": uri}).json
    log = portal.get(f"/runs/{job['id']}").json
    assert log["state"] == "QUEUED"
    assert log["request"]["workflow_url"] == uri and log["request"]["tags"] == {}


# -- refused submissions --------------------------------------------------------------------

BASE = [("workflow_type", "MoML"), ("workflow_type_version", "1.0")]
ATTACHED = [("workflow_attachment", ("hello.xml", HELLO))]


@pytest.mark.parametrize("fields, words", [
    ([("workflow_type", "WDL"), ("workflow_type_version", "1.0"), *ATTACHED],
     "workflow_type 'WDL' is not supported"),
    ([("workflow_type_version", "1.0"), *ATTACHED], "workflow_type is required"),
    ([("workflow_type", "MoML"), *ATTACHED], "workflow_type_version is required"),
    ([("workflow_type", "MoML"), ("workflow_type_version", "7"), *ATTACHED],
     "version '7' is not supported"),
    ([*BASE, ("workflow_params", "{not json"), *ATTACHED], "workflow_params must be a JSON"),
    ([*BASE, ("workflow_params", "[1]"), *ATTACHED], "parameters"),
    ([*BASE, ("workflow_params", '{".hello.Nope.x": 1}'), *ATTACHED], "no parameter"),
    ([*BASE, ("tags", '{"a": 1}'), *ATTACHED], "tags must be a JSON object of strings"),
    ([*BASE, ("workflow_engine_parameters", "[]"), *ATTACHED],
     "workflow_engine_parameters must be a JSON object"),
    ([*BASE, ("workflow_engine", "cromwell"), *ATTACHED], "workflow_engine 'cromwell'"),
    ([*BASE, ("workflow_engine_version", "1"), *ATTACHED], "needs workflow_engine"),
    ([*BASE, ("colour", "blue"), *ATTACHED], "unknown form field 'colour'"),
    ([*BASE, ("workflow_type", "MoML"), *ATTACHED], "given twice"),
    (BASE, "unless exactly one workflow_attachment"),
    ([*BASE, *ATTACHED, ("workflow_attachment", ("other.xml", HELLO))],
     "unless exactly one workflow_attachment"),
    ([*BASE, ("workflow_url", "other.xml"), *ATTACHED], "names no attachment"),
    ([*BASE, ("workflow_url", "hello.xml"), *ATTACHED,
      ("workflow_attachment", ("data.txt", b"x"))], "no attachments besides the workflow"),
    ([*BASE, ("workflow_url", "https://example.org/flow.xml"), *ATTACHED], "unused"),
    ([*BASE, ("workflow_url", "file:///etc/passwd")], "workflow_url"),
    ([*BASE, ("workflow_attachment", ("../hello.xml", HELLO))], "must not contain '..'"),
    ([*BASE, ("workflow_attachment", ("a/../../hello.xml", HELLO))], "must not contain '..'"),
    ([*BASE, ("workflow_attachment", ("/etc/hello.xml", HELLO))], "must be relative"),
    ([*BASE, ("workflow_attachment", ("hello.xml", b"<html/>"))], "not a MoML workflow"),
    ([*BASE, ("workflow_attachment", ("hello.xml", b""))], "empty"),
])
def test_a_bad_run_request_is_400(portal, fields, words):
    refused(portal.submit(fields), 400, words)


def test_a_part_without_a_file_name_is_400(portal):
    body = (b"--b\r\nContent-Disposition: form-data; name=\"workflow_type\"\r\n\r\nMoML\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"workflow_attachment\"\r\n\r\n"
            + HELLO + b"\r\n--b--\r\n")
    reply = portal.request("POST", "/runs", body=body,
                           headers={"Content-Type": "multipart/form-data; boundary=b"})
    refused(reply, 400, "needs a file name")


@pytest.mark.parametrize("content_type, body, words", [
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=\"x\""
     b"\r\n\r\nunterminated", "not a well-formed"),
    ("multipart/form-data; boundary=b", b"no boundary at all", "not a well-formed"),
    ("multipart/form-data", b"--b\r\n\r\n--b--\r\n", "names no boundary"),
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n",
     "Content-Disposition: form-data"),
])
def test_a_malformed_form_is_400(portal, content_type, body, words):
    refused(portal.request("POST", "/runs", body=body, headers={"Content-Type": content_type}),
            400, words)


def test_a_body_that_is_no_form_is_400(portal):
    reply = portal.request("POST", "/runs", body=b"{}",
                           headers={"Content-Type": "application/json"})
    refused(reply, 400, "must be multipart/form-data, not application/json")
    refused(portal.request("POST", "/runs"), 400, "not untyped")


# -- listing ---------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_in_stable_pages(portal, gateway):
    made = [gateway.run(tags=json.dumps({"n": str(n)})) for n in range(3)]
    first = gateway.get("/runs?page_size=2").json
    assert [r["run_id"] for r in first["runs"]] == made[::-1][:2]
    assert first["runs"][0]["tags"] == {"n": "2"}
    assert first["next_page_token"]
    # A run added meanwhile does not move the next page.
    newer = gateway.run()
    second = gateway.get(f"/runs?page_size=2&page_token={first['next_page_token']}").json
    assert second["runs"][0]["run_id"] == made[0]
    seen = [r["run_id"] for r in first["runs"] + second["runs"]]
    token = second["next_page_token"]
    while token:
        page = gateway.get(f"/runs?page_size=2&page_token={token}").json
        seen += [r["run_id"] for r in page["runs"]]
        token = page["next_page_token"]
    assert newer not in seen and set(made) <= set(seen) and len(seen) == len(set(seen))
    assert newer in [r["run_id"] for r in gateway.get("/runs").json["runs"]]
    # None of them are the portal's.
    assert not set(made) & {r["run_id"] for r in portal.get("/runs?page_size=500").json["runs"]}


@pytest.mark.parametrize("query, words", [
    ("page_token=bm9wZQ", "page_token"), ("page_token=%25%25", "page_token"),
    ("page_size=0", "page_size"), ("page_size=many", "page_size"),
])
def test_bad_paging_is_400(portal, query, words):
    refused(portal.get(f"/runs?{query}"), 400, words)


# -- one run -----------------------------------------------------------------------------------


def test_cancel_stops_a_running_run(portal):
    run_id = portal.run(SLEEPER, "sleep-loop.xml", workflow_params=json.dumps(LONG))
    portal.wait(run_id, "RUNNING")
    reply = portal.request("POST", f"/runs/{run_id}/cancel")
    assert (reply.status, reply.json) == (200, {"run_id": run_id})
    assert portal.wait(run_id, TERMINAL) == "CANCELED"
    assert portal.v1.get(f"/v1/jobs/{run_id}/state").json["state"] == "ABORTED"
    # Nothing left to cancel.
    refused(portal.request("POST", f"/runs/{run_id}/cancel", check=False), 409, "ABORTED")


def test_tasks_are_an_empty_page_and_no_task_is_found(portal):
    run_id = portal.run()
    empty = {"task_logs": [], "next_page_token": ""}
    assert portal.get(f"/runs/{run_id}/tasks").json == empty
    assert portal.get(f"/runs/{run_id}/tasks?page_size=-1&page_token=x").json == empty
    refused(portal.get(f"/runs/{run_id}/tasks/Ramp"), 404, "no task 'Ramp'")


def test_another_frontends_run_is_404_everywhere(portal, gateway):
    run_id = portal.run()
    for method, path in [("GET", f"/runs/{run_id}"), ("GET", f"/runs/{run_id}/status"),
                         ("POST", f"/runs/{run_id}/cancel"), ("GET", f"/runs/{run_id}/tasks"),
                         ("GET", f"/runs/{run_id}/tasks/x")]:
        refused(gateway.request(method, path), 404, run_id)
    for path in (f"/runs/{run_id}/stdout", f"/runs/{run_id}/stderr"):
        refused(gateway.get(path, check=False), 404, run_id)
    assert portal.state(run_id) in {"QUEUED", "RUNNING", "COMPLETE"}


@pytest.mark.parametrize("path", ["/runs/20261203T000000Z-abcdef", "/runs/nothing/status",
                                  "/runs/../service-info"])
def test_an_unknown_run_is_404(portal, path):
    reply = portal.get(path, check=path != "/runs/../service-info")
    assert reply.status in (404, 200)
    if reply.status == 404:
        refused(reply, 404, "")


def test_unknown_paths_and_methods_answer_in_wes_shape(portal):
    refused(portal.get("/nowhere", check=False), 404, "no such resource")
    refused(portal.request("DELETE", "/runs", check=False), 405, "not allowed")


# -- the standard's document, fuzzed ---------------------------------------------------------

ST = Path(sys.executable).parent / "st"


@pytest.mark.skipif(not ST.exists(), reason="schemathesis is not installed (the test extra has it)")
def test_schemathesis_finds_no_server_error_or_undocumented_answer(tmp_path):
    server = LiveKree(tmp_path, frontends=("portal",),
                      config_text="[supervisor]\nmax_running = 1\nstop_grace_seconds = 1\n")
    server.extra_args = ["--stop-jobs-on-exit"]
    server.start()
    cert, key = server.frontend_files("portal")
    try:
        result = subprocess.run(
            [str(ST), "run", str(SPECS / "workflow_execution_service.openapi.yaml"),
             "--url", f"https://localhost:{server.port}{PREFIX}",
             "--tls-verify", str(server.ca_path),
             "--request-cert", str(cert), "--request-cert-key", str(key),
             "--phases", "fuzzing,stateful",
             "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--max-examples", "25", "--workers", "2", "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-6000:]
        assert " passed" in result.stdout
        assert '"level": "error"' not in (server.state_dir / "logs" / "kreed.log").read_text()
    finally:
        assert server.stop() == 0


# -- an unmodified third-party client ------------------------------------------------------

#: wes-client of PyPI's wes-service 5.0, in an environment of its own (its
#: dependencies are not KREE's): KREE_WES_CLIENT names it, else it is looked up on PATH.
WES_CLIENT = os.environ.get("KREE_WES_CLIENT") or shutil.which("wes-client")


@pytest.mark.skipif(not WES_CLIENT, reason="wes-client (pip install wes-service==5.0 in a "
                    "venv of its own) is not installed; set KREE_WES_CLIENT to it")
def test_the_unmodified_wes_client_reads_service_info_runs_and_logs(server, portal):
    # It submits only CWL (chosen by file extension): --run waits for the CWL kind.
    run_id = portal.run(workflow_engine_parameters=json.dumps({"threads": "4"}))
    assert portal.wait(run_id, TERMINAL) == "COMPLETE"
    cert, key = server.frontend_files("portal")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "wes_client"),
           "KREE_TEST_CLIENT_CERT": str(cert), "KREE_TEST_CLIENT_KEY": str(key),
           "REQUESTS_CA_BUNDLE": str(server.ca_path)}

    def wes_client(*args: str) -> str:
        done = subprocess.run([WES_CLIENT, f"--host=localhost:{server.port}", "--proto=https",
                               *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    info = json.loads(wes_client("--info"))
    assert info["type"]["artifact"] == "wes" and "MoML" in info["workflow_type_versions"]
    assert run_id in {run["run_id"] for run in json.loads(wes_client("--list"))["runs"]}
    log = json.loads(wes_client(f"--get={run_id}"))
    assert (log["run_id"], log["state"]) == (run_id, "COMPLETE")
    # --log prints what the run log's stderr URL serves.
    assert "'threads'" in wes_client(f"--log={run_id}")


# -- states ------------------------------------------------------------------------------------


def test_kree_states_map_onto_wes_states():
    from kree.supervisor.engine_events import DISK_FULL, LOST, VANISHED

    assert {s: wes_state_of(s) for s in JobState if s is not JobState.FAILED} == {
        JobState.NEW: "QUEUED", JobState.QUEUED: "QUEUED", JobState.RUNNING: "RUNNING",
        JobState.WAITING: "RUNNING", JobState.PAUSED: "PAUSED", JobState.FINISHED: "COMPLETE",
        JobState.ABORTED: "CANCELED"}
    # The supervisor's own failures are SYSTEM_ERROR; the workflow's EXECUTOR_ERROR.
    for error in (LOST, VANISHED, DISK_FULL, "quarantined: its record could not be understood",
                  "the engine could not start: [Errno 2]",
                  "the engine could not enter its sandbox: landlock: ENOSYS"):
        assert is_system_error(error), error
    for error in ("engine exited with code 1", "walltime", "input timeout", None,
                  "Ramp: division by zero"):
        assert wes_state_of(JobState.FAILED, error) == "EXECUTOR_ERROR", error
