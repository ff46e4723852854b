"""
The v1 API on a live kreed: every endpoint's success and error paths,
isolation between frontends, and the audit trail.  Every response is
checked against the OpenAPI document by the client (tests/live.py).
"""

import json
import os
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from kree.store.engine import create_engine
from waiting import holds_for

MOML = (
    b'<?xml version="1.0" standalone="no"?>\n'
    b'<!DOCTYPE entity PUBLIC "-//UC Berkeley//DTD MoML 1//EN"\n'
    b'    "http://ptolemy.eecs.berkeley.edu/xml/dtd/MoML_1.dtd">\n'
    b'<entity name="hello" class="ptolemy.actor.TypedCompositeActor">\n'
    b'  <property name="SDF Director" class="ptolemy.domains.sdf.kernel.SDFDirector"/>\n'
    b'  <entity name="Ramp" class="ptolemy.actor.lib.Ramp"/>\n'
    b'  <entity name="Const" class="ptolemy.actor.lib.Const"/>\n'
    b'  <entity name="Display" class="ptolemy.actor.lib.gui.Display"/>\n'
    b'  <relation name="r"/><relation name="c"/>\n'
    b'  <link port="Ramp.output" relation="r"/><link port="Display.input" relation="r"/>\n'
    b'  <link port="Const.output" relation="c"/><link port="Display.input" relation="c"/>\n'
    b"</entity>\n"
)
XML = {"Content-Type": "application/xml"}


@pytest.fixture(scope="module")
def portal(kree_server):
    return kree_server.client("portal")


@pytest.fixture(scope="module")
def gateway(kree_server):
    return kree_server.client("gateway")


@pytest.fixture(scope="module")
def workflow(portal, gateway):
    """The same document uploaded by both frontends: each may name only its own uploads."""
    uris = set()
    for client in (portal, gateway):
        reply = client.post("/v1/workflows", body=MOML, headers=XML)
        assert reply.status in (200, 201)
        uris.add(reply.json["uri"])
    (uri,) = uris
    return uri


def new_job(client, workflow, **fields):
    reply = client.post("/v1/jobs", {"workflow": workflow, **fields})
    assert reply.status == 201, reply.body
    return reply.json


def audit_records(server, job_id=None):
    engine = create_engine(server.config.store_url)
    try:
        with engine.connect() as conn:
            query = "SELECT actor, end_user, action, job_id, outcome, status FROM audit_log"
            if job_id:
                query += " WHERE job_id = :job"
            return [dict(r._mapping) for r in conn.execute(sa.text(query + " ORDER BY id"),
                                                           {"job": job_id})]
    finally:
        engine.dispose()


# -- service ---------------------------------------------------------------


def test_service_info(portal, kree_server):
    info = portal.get("/v1/service-info").json
    assert info["name"] == "KREE" and info["api_version"] == "v1"
    assert info["frontend"] == "portal"
    assert info["limits"]["max_body_bytes"] == kree_server.config.server.max_body_bytes
    assert "PAUSED" in info["states"]


def test_openapi_document_is_served_and_valid(portal):
    from openapi_spec_validator import validate

    served = portal.get("/v1/openapi.json").json
    on_disk = json.loads((Path(__file__).parent.parent / "kree/api/openapi.json").read_text())
    assert served == on_disk
    validate(served)


def test_capabilities_list_actor_classes_with_package_and_policy(portal, kree_server):
    capabilities = portal.get("/v1/capabilities").json
    assert capabilities["engines"] == ["kree"] and capabilities["backends"] == ["local"]
    actors = {a["class"]: a for a in capabilities["actors"]}
    assert actors["ptolemy.actor.lib.Ramp"]["package"] == "kree"
    assert {p["name"] for p in actors["ptolemy.actor.lib.Ramp"]["parameters"]} >= {"init", "step"}
    assert actors["ptolemy.actor.lib.python.PythonScript"]["policy"] == "reject"
    assert capabilities["software"]["Python"]["path"]
    # The admin's policy in the store overrides the engine's default.
    import sqlalchemy as sa

    from kree.store.engine import create_engine
    engine = create_engine(kree_server.config.store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO actor_policies VALUES "
                             "('ptolemy.actor.lib.python.PythonScript', 'allow', '2026-01-01')"))
    engine.dispose()
    capabilities = portal.get("/v1/capabilities").json
    actors = {a["class"]: a for a in capabilities["actors"]}
    assert actors["ptolemy.actor.lib.python.PythonScript"]["policy"] == "allow"
    assert capabilities["policy"] == {"ptolemy.actor.lib.python.PythonScript": "allow"}


def test_feasibility_request_errors(portal, workflow):
    # The answers themselves: tests/test_fetching_jobs.py.
    assert portal.post("/v1/feasibility", {}).error == "invalid_uri"
    assert portal.post("/v1/feasibility", {"workflow": workflow, "x": 1}).error == "invalid_request"
    assert portal.post("/v1/feasibility", {"workflow": workflow,
                                           "resources": {"cpus": 0}}).error == "invalid_resources"
    assert portal.post("/v1/feasibility", body=b"[", headers={
        "Content-Type": "application/json"}).error == "malformed_json"
    assert portal.post("/v1/feasibility", {"workflow": "gopher://x/y"}).status == 422
    assert portal.post("/v1/feasibility", {}).status == 422


def test_subscription_requests_are_checked(portal, gateway, workflow):
    job = new_job(portal, workflow)
    theirs = new_job(gateway, workflow)
    for body, code in [
        ({"url": "ftp://listener.example/hook"}, "uri_not_allowed"),
        ({"url": "http://127.0.0.1:9/hook"}, "uri_not_allowed"),  # internal: not allowed here
        ({"url": "http://[::1]:9/hook"}, "uri_not_allowed"),
        ({"url": "http://user:pw@listener.example/"}, "uri_not_allowed"),
        ({"url": "https://no-such-host.invalid/hook"}, "uri_not_allowed"),
        ({"url": "https://x.example/", "job": theirs["id"]}, "job_not_found"),
        ({"url": "https://x.example/", "events": ["job.exploded"]}, "invalid_request"),
        ({"url": "https://x.example/", "events": []}, "invalid_request"),
        ({"url": "https://x.example/", "secret": "short"}, "invalid_request"),
        ({"url": "https://x.example/", "colour": "blue"}, "invalid_request"),
        ({}, "uri_not_allowed"),
    ]:
        reply = portal.post("/v1/subscriptions", body)
        assert (reply.status, reply.error) == (422, code), (body, reply.body)
    assert portal.get("/v1/subscriptions").json == {"subscriptions": []}
    assert portal.get("/v1/subscriptions/sub_nonexistent").status == 404
    assert portal.delete("/v1/subscriptions/sub_nonexistent").status == 404
    assert job["id"]


def test_unknown_paths_and_methods(portal):
    reply = portal.get("/v2/jobs", check=False)
    assert reply.status == 404 and reply.error == "not_found"
    reply = portal.request("PUT", "/v1/jobs", json_body={}, check=False)
    assert reply.status == 405 and reply.error == "method_not_allowed"
    assert reply.headers["allow"] == "GET, POST"


# -- workflows ---------------------------------------------------------------


def test_upload_is_idempotent_by_content(portal, kree_server):
    first = portal.post("/v1/workflows", body=MOML + b"<!-- v2 -->", headers=XML)
    assert first.status == 201
    sha = first.json["sha256"]
    assert first.json["uri"] == f"kree:workflow/{sha}" and first.json["size"] == len(MOML + b"<!-- v2 -->")
    again = portal.post("/v1/workflows", body=MOML + b"<!-- v2 -->", headers=XML)
    assert again.status == 200 and again.json == first.json
    assert (kree_server.state_dir / "cache" / sha).read_bytes() == MOML + b"<!-- v2 -->"


@pytest.mark.parametrize(
    "body, headers, status, code",
    [
        (MOML, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (MOML, {}, 415, "unsupported_media_type"),
        (b"", XML, 400, "invalid_request"),
        (b"<entity><unclosed></entity>", XML, 422, "invalid_workflow"),
        (b"<html><body/></html>", XML, 422, "invalid_workflow"),
        (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
         b"<entity>&b;</entity>", XML, 422, "invalid_workflow"),
        (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
         b"<entity>&x;</entity>", XML, 422, "invalid_workflow"),
    ],
)
def test_upload_refusals(portal, body, headers, status, code):
    reply = portal.post("/v1/workflows", body=body, headers=headers)
    assert (reply.status, reply.error) == (status, code)


def test_oversized_bodies_get_413(portal, kree_server):
    big = b"<entity>" + b" " * kree_server.config.server.max_body_bytes + b"</entity>"
    reply = portal.post("/v1/workflows", body=big, headers=XML)
    assert reply.status == 413 and reply.error == "too_large"
    reply = portal.post("/v1/jobs", body=b'{"workflow": "' + b"x" * len(big) + b'"}',
                        headers={"Content-Type": "application/json"})
    assert reply.status == 413
    # The server is still fine.
    assert portal.get("/v1/service-info").status == 200


# -- creating and listing jobs -------------------------------------------------


def test_create_job(portal, workflow):
    reply = portal.post("/v1/jobs", {
        "workflow": workflow,
        "parameters": {".hello.Ramp.step": 2, ".hello.Const.value": "\"hi\""},
        "inputs": {"data.csv": "https://data.example.org/data.csv"},
        "resources": {"cpus": 2, "memory": "512M", "walltime": "00:10:00"},
    }, headers={"X-KREE-User": "alice"})
    assert reply.status == 201
    job = reply.json
    assert reply.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "NEW" and job["user"] == "alice"
    assert job["workflow"] == workflow and job["workflow_sha256"] == workflow.split("/")[1]
    assert job["parameters"] == {".hello.Const.value": "\"hi\"", ".hello.Ramp.step": 2}
    assert job["inputs"] == {"data.csv": {"uri": "https://data.example.org/data.csv",
                                          "status": "pending", "size": None}}
    assert job["resources"] == {"cpus": 2, "memory": 512 * 1024**2, "walltime": 600}
    assert portal.get(f"/v1/jobs/{job['id']}").json == job


def test_create_and_queue_at_once(portal, workflow):
    job = new_job(portal, workflow, queue=True)
    assert job["state"] == "QUEUED" and job["queued"] is not None


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"workflow": "kree:workflow/" + "0" * 64}, 422, "workflow_not_found"),
        ({"workflow": "gopher://example.org/wf"}, 422, "uri_not_allowed"),
        ({"workflow": "https:///nohost"}, 422, "invalid_uri"),
        ({"workflow": "file:relative/path"}, 422, "invalid_uri"),
        ({}, 422, "invalid_uri"),
        ({"workflow": "WF", "parameters": {"Ramp.step": 1}}, 422, "invalid_parameter"),
        ({"workflow": "WF", "parameters": {".a..b": 1}}, 422, "invalid_parameter"),
        ({"workflow": "WF", "parameters": {".a.b": {"nested": 1}}}, 422, "invalid_parameter"),
        ({"workflow": "WF", "parameters": [1]}, 422, "invalid_parameter"),
        ({"workflow": "WF", "inputs": {"../etc/passwd": "https://x.org/a"}}, 422, "invalid_input"),
        ({"workflow": "WF", "inputs": {".hidden": "https://x.org/a"}}, 422, "invalid_input"),
        ({"workflow": "WF", "inputs": {"a": "kree:workflow/x"}}, 422, "uri_not_allowed"),
        ({"workflow": "WF", "resources": {"cpus": 0}}, 422, "invalid_resources"),
        ({"workflow": "WF", "resources": {"memory": "lots"}}, 422, "invalid_resources"),
        ({"workflow": "WF", "resources": {"gpus": 1}}, 422, "invalid_resources"),
        ({"workflow": "WF", "queue": "yes"}, 422, "invalid_request"),
        ({"workflow": "WF", "colour": "blue"}, 422, "invalid_request"),
    ],
)
def test_create_refusals(portal, workflow, body, status, code):
    if body.get("workflow") == "WF":
        body = {**body, "workflow": workflow}
    reply = portal.post("/v1/jobs", body)
    assert (reply.status, reply.error) == (status, code), reply.body


@pytest.mark.parametrize(
    "body, content_type, status, code",
    [
        (b"{not json", "application/json", 400, "malformed_json"),
        (b"[1, 2]", "application/json", 400, "malformed_json"),
        (b"\xff\xfe", "application/json", 400, "invalid_request"),
        (b'{"workflow": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b"", "application/json", 400, "invalid_request"),
        (b"[" * 100000, "application/json", 400, "malformed_json"),
    ],
)
def test_malformed_bodies(portal, body, content_type, status, code):
    reply = portal.post("/v1/jobs", body=body, headers={"Content-Type": content_type})
    assert (reply.status, reply.error) == (status, code)


def test_list_paginates_and_filters(kree_server, workflow, tmp_path):
    # A frontend of its own, so other tests' jobs do not interfere.
    result = kree_server.admin("cert", "issue", "--frontend", "lister")
    assert result.returncode == 0, result.stderr
    client = kree_server.client("lister")
    assert client.post("/v1/workflows", body=MOML, headers=XML).json["uri"] == workflow
    ids = [new_job(client, workflow)["id"] for _ in range(5)]
    for _ in range(2):
        reply = client.post("/v1/jobs", {"workflow": workflow}, headers={"X-KREE-User": "bob"})
        ids.append(reply.json["id"])
    client.post(f"/v1/jobs/{ids[0]}/queue")
    seen, cursor = [], None
    while True:
        page = client.get("/v1/jobs?limit=3" + (f"&after={cursor}" if cursor else "")).json
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    queued = client.get("/v1/jobs?state=queued").json["jobs"]
    assert [j["id"] for j in queued] == [ids[0]]
    by_param = client.get("/v1/jobs?user=bob").json["jobs"]
    by_header = client.get("/v1/jobs", headers={"X-KREE-User": "bob"}).json["jobs"]
    assert {j["id"] for j in by_param} == {j["id"] for j in by_header} == set(ids[5:])
    future = client.get("/v1/jobs?created_after=2999-01-01T00:00:00Z").json
    assert future == {"jobs": [], "next": None}
    assert client.get("/v1/jobs?state=SLEEPING").error == "invalid_request"
    assert client.get("/v1/jobs?limit=0").status == 400
    assert client.get("/v1/jobs?limit=ten").status == 400
    assert client.get("/v1/jobs?created_after=yesterday").status == 400


def test_user_header_is_checked(portal):
    reply = portal.get("/v1/jobs", headers={"X-KREE-User": "x" * 256})
    assert reply.status == 400 and "X-KREE-User" in reply.json["error"]["message"]


# -- one job ------------------------------------------------------------------


def test_state_actions_through_the_machine(portal, workflow):
    job = new_job(portal, workflow)
    path = f"/v1/jobs/{job['id']}"
    reply = portal.post(f"{path}/resume")
    assert reply.status == 409 and reply.error == "invalid_state"
    assert reply.json["error"]["details"] == {"state": "NEW", "action": "resume",
                                              "allowed": ["queue", "stop", "kill"]}
    assert portal.post(f"{path}/queue").json["state"] == "QUEUED"
    paused = portal.post(f"{path}/pause", {"reason": "maintenance"}).json
    assert paused["state"] == "PAUSED" and paused["paused_from"] == "QUEUED"
    assert portal.post(f"{path}/pause").status == 409
    assert portal.post(f"{path}/resume").json["state"] == "QUEUED"
    state = portal.get(f"{path}/state").json
    assert state["state"] == "QUEUED" and state["queued"] and state["ended"] is None
    stopped = portal.post(f"{path}/stop").json
    assert stopped["state"] == "ABORTED" and stopped["ended"] is not None
    assert portal.post(f"{path}/kill").status == 409
    events = portal.get(f"{path}/events").json["events"]
    assert [(e["data"].get("from"), e["data"].get("to")) for e in events[1:]] == [
        ("NEW", "QUEUED"), ("QUEUED", "PAUSED"), ("PAUSED", "QUEUED"), ("QUEUED", "ABORTED")]
    assert events[2]["data"]["reason"] == "maintenance"
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert portal.post(f"/v1/jobs/{new_job(portal, workflow)['id']}/kill").json["state"] == "ABORTED"


def test_parameters_inputs_and_resources_only_while_new(portal, workflow):
    job = new_job(portal, workflow, parameters={".hello.Ramp.init": 1, ".hello.Ramp.step": 2})
    path = f"/v1/jobs/{job['id']}"
    reply = portal.patch(f"{path}/parameters", {"parameters": {".hello.Ramp.init": 10, ".hello.Ramp.step": None}})
    assert reply.json == {"id": job["id"], "parameters": {".hello.Ramp.init": 10}}
    assert portal.get(f"{path}/parameters").json["parameters"] == {".hello.Ramp.init": 10}
    assert portal.patch(f"{path}/parameters", {".hello.Const.value": "s"}).json["parameters"] == {
        ".hello.Ramp.init": 10, ".hello.Const.value": "s"}
    assert portal.patch(f"{path}/parameters", {"parameters": {"bad": 1}}).status == 422
    assert portal.patch(f"{path}/parameters", {".hello.Nope.x": 1}).error == "invalid_parameter"
    reply = portal.put(f"{path}/inputs/table.csv", {"uri": "https://data.example.org/t.csv"})
    assert reply.json == {"id": job["id"], "name": "table.csv",
                          "uri": "https://data.example.org/t.csv", "status": "pending"}
    for name in ("..", ".hidden", "a%2Fb", "%2E%2E"):
        reply = portal.put(f"{path}/inputs/{name}", {"uri": "https://x.org/a"}, check=False)
        assert reply.status in (404, 422), name
    assert portal.put(f"{path}/inputs/x", {"uri": "ftp://x.org/a"}).error == "uri_not_allowed"
    assert portal.put(f"{path}/inputs/x", {}).error == "invalid_uri"
    reply = portal.put(f"{path}/resources", {"walltime": 3600, "priority": 5, "backend": "local"})
    assert reply.json["resources"] == {"walltime": 3600, "priority": 5, "backend": "local"}
    # Only the backends this server offers: no such backend, and one installed but not
    # enabled here, are refused alike.
    for backend in ("cloud", "slurm", 7):
        reply = portal.put(f"{path}/resources", {"backend": backend})
        assert reply.status == 422 and reply.error == "invalid_resources", backend
        assert reply.json["error"]["details"] == {"field": "backend"}
        assert reply.json["error"]["message"] == (
            f"backend {backend!r} is not enabled on this server (offered: local)")
    portal.post(f"{path}/queue")
    for reply in (portal.patch(f"{path}/parameters", {".hello.Ramp.init": 3}),
                  portal.put(f"{path}/inputs/late.csv", {"uri": "https://x.org/a"}),
                  portal.put(f"{path}/resources", {"cpus": 1})):
        assert reply.status == 409 and reply.error == "invalid_state"
        assert "only while NEW" in reply.json["error"]["message"]
    record = portal.get(path).json
    assert record["parameters"] == {".hello.Ramp.init": 10, ".hello.Const.value": "s"}
    assert set(record["inputs"]) == {"table.csv"}


def test_input_endpoint_needs_a_waiting_job(portal, workflow):
    job = new_job(portal, workflow)
    for reply in (portal.get(f"/v1/jobs/{job['id']}/input"),
                  portal.post(f"/v1/jobs/{job['id']}/input", {"answers": {"x": 1}})):
        assert reply.status == 409 and reply.error == "not_waiting"
        assert reply.json["error"]["details"]["state"] == "NEW"


def test_messages_and_events_cursors(portal, workflow):
    job = new_job(portal, workflow)
    path = f"/v1/jobs/{job['id']}"
    assert portal.get(f"{path}/messages").json == {"id": job["id"], "messages": [], "next": 0}
    portal.post(f"{path}/queue")
    portal.post(f"{path}/pause")
    page = portal.get(f"{path}/events?after=1&limit=1").json
    assert [e["seq"] for e in page["events"]] == [2] and page["next"] == 2
    page = portal.get(f"{path}/events?after=2").json
    assert [e["type"] for e in page["events"]] == ["job.state"] and page["next"] == 3
    assert portal.get(f"{path}/events?after=3").json == {"id": job["id"], "events": [], "next": 3}
    assert portal.get(f"{path}/events?after=-1").status == 400


def test_long_poll_wakes_on_a_new_event(portal, workflow):
    job = new_job(portal, workflow)
    path = f"/v1/jobs/{job['id']}"
    started = time.monotonic()
    empty = portal.get(f"{path}/events?after=1&wait=1").json
    assert empty["events"] == [] and 0.9 <= time.monotonic() - started < 5
    result = {}

    def poll():
        begun = time.monotonic()
        result["reply"] = portal.get(f"{path}/events?after=1&wait=30")
        result["seconds"] = time.monotonic() - begun

    poller = threading.Thread(target=poll)
    poller.start()
    holds_for(poller.is_alive, "the long poll waiting", duration=0.5)
    portal.post(f"{path}/queue")
    poller.join(60)
    assert [e["data"]["to"] for e in result["reply"].json["events"]] == ["QUEUED"]
    # Woken by the event, not by the end of its 30 s wait.
    assert result["seconds"] < 25


def test_results_and_products(portal, workflow, kree_server):
    job = new_job(portal, workflow)
    path = f"/v1/jobs/{job['id']}"
    assert portal.get(f"{path}/results").json == {
        "id": job["id"], "state": "NEW", "complete": False, "outputs": {}, "products": []}
    products = kree_server.state_dir / "jobs" / job["id"] / "products"
    products.mkdir(parents=True)
    (products / "result.csv").write_text("a,b\n1,2\n")
    (products / "image.png").write_bytes(bytes(range(256)) * 4)
    (products / ".partial").write_text("hidden")
    secret = kree_server.base / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, products / "link.txt")
    listing = portal.get(f"{path}/products").json["products"]
    assert listing == [
        {"name": "image.png", "size": 1024, "media_type": "image/png",
         "href": f"{path}/products/image.png"},
        {"name": "result.csv", "size": 8, "media_type": "text/csv",
         "href": f"{path}/products/result.csv"},
    ]
    assert portal.get(f"{path}/results").json["products"] == listing
    reply = portal.get(f"{path}/products/result.csv")
    assert reply.body == b"a,b\n1,2\n"
    assert reply.headers["content-type"].startswith("text/csv")
    assert reply.headers["content-length"] == "8"
    ranged = portal.get(f"{path}/products/image.png", headers={"Range": "bytes=10-19"})
    assert ranged.status == 206 and ranged.body == bytes(range(10, 20))
    assert ranged.headers["content-range"] == "bytes 10-19/1024"
    head = portal.request("HEAD", f"{path}/products/image.png")
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "1024"
    for name in ("link.txt", ".partial", "missing.bin", "..%2F..%2Fsecret.txt", "%2E%2E"):
        reply = portal.get(f"{path}/products/{name}")
        assert reply.status == 404 and reply.error == "product_not_found", name


def test_delete(portal, workflow, kree_server):
    job = new_job(portal, workflow)
    job_dir = kree_server.state_dir / "jobs" / job["id"]
    (job_dir / "products").mkdir(parents=True)
    reply = portal.delete(f"/v1/jobs/{job['id']}")
    assert reply.status == 204 and reply.body == b""
    assert not job_dir.exists()
    assert portal.get(f"/v1/jobs/{job['id']}").status == 404
    assert portal.delete(f"/v1/jobs/{job['id']}").status == 404
    active = new_job(portal, workflow, queue=True)
    reply = portal.delete(f"/v1/jobs/{active['id']}")
    assert reply.status == 409 and "stop or kill it first" in reply.json["error"]["message"]
    portal.post(f"/v1/jobs/{active['id']}/stop")
    assert portal.delete(f"/v1/jobs/{active['id']}").status == 204


# -- isolation ------------------------------------------------------------------

JOB_ENDPOINTS = [
    ("GET", ""), ("DELETE", ""), ("GET", "/state"), ("GET", "/parameters"),
    ("PATCH", "/parameters"), ("PUT", "/inputs/a.csv"), ("PUT", "/resources"),
    ("POST", "/queue"), ("POST", "/pause"), ("POST", "/resume"), ("POST", "/stop"),
    ("POST", "/kill"), ("GET", "/input"), ("POST", "/input"), ("GET", "/messages"),
    ("GET", "/events"), ("GET", "/results"), ("GET", "/products"),
    ("GET", "/products/result.csv"),
]


@pytest.mark.parametrize("method, suffix", JOB_ENDPOINTS)
def test_another_frontends_job_is_not_found(portal, gateway, workflow, method, suffix):
    job = new_job(portal, workflow)
    body = {"uri": "https://x.org/a"} if "inputs" in suffix else {}
    reply = gateway.request(method, f"/v1/jobs/{job['id']}{suffix}",
                            json_body=body if method in ("PUT", "PATCH") else None)
    assert reply.status == 404 and reply.error == "job_not_found"
    # Unchanged for its owner.
    assert portal.get(f"/v1/jobs/{job['id']}").json["state"] == "NEW"


@pytest.mark.parametrize("method, suffix", JOB_ENDPOINTS)
def test_unknown_job_ids_are_not_found(portal, method, suffix):
    for job_id in ("0" * 26, "nonsense", "%00"):
        reply = portal.request(method, f"/v1/jobs/{job_id}{suffix}",
                               json_body={} if method in ("PUT", "PATCH") else None)
        assert reply.status == 404, (job_id, reply.body)


def test_lists_show_only_own_jobs(portal, gateway, workflow):
    mine = new_job(gateway, workflow)["id"]
    theirs = new_job(portal, workflow)["id"]
    listed = {j["id"] for j in gateway.get("/v1/jobs?limit=500").json["jobs"]}
    assert mine in listed and theirs not in listed


# -- audit ------------------------------------------------------------------------


def test_every_change_is_audited(portal, workflow, kree_server):
    reply = portal.post("/v1/jobs", {"workflow": workflow}, headers={"X-KREE-User": "carol"})
    job_id = reply.json["id"]
    portal.post(f"/v1/jobs/{job_id}/queue", headers={"X-KREE-User": "carol"})
    portal.post(f"/v1/jobs/{job_id}/resume")  # refused: 409
    portal.get(f"/v1/jobs/{job_id}")  # reads are not audited
    records = audit_records(kree_server, job_id)
    assert records == [
        {"actor": "portal", "end_user": "carol", "action": "job.create", "job_id": job_id,
         "outcome": "ok", "status": 201},
        {"actor": "portal", "end_user": "carol", "action": "job.queue", "job_id": job_id,
         "outcome": "ok", "status": 200},
        {"actor": "portal", "end_user": None, "action": "job.resume", "job_id": job_id,
         "outcome": "refused", "status": 409},
    ]
