"""
Workflows and inputs by URI, through the API: the cache revalidates with a
conditional GET, a changed document is fetched again and each job records its
version, concurrent jobs share one fetch, inputs are staged; and the
feasibility check.
"""

import email.utils
import hashlib
import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from live import LiveKree, submit, wait_for_state

REPO = Path(__file__).resolve().parent.parent
CONFIG = """
[fetch]
allow_private_addresses = true
[supervisor]
max_running = 2
stop_grace_seconds = 2
monitor_interval_seconds = 0.5
"""
READER = b"""<?xml version="1.0"?>
<entity name="reader" class="ptolemy.actor.TypedCompositeActor">
  <property name="SDF Director" class="ptolemy.domains.sdf.kernel.SDFDirector">
    <property name="iterations" value="1"/></property>
  <entity name="Read" class="ptolemy.actor.lib.io.FileReader">
    <property name="fileOrURL" value="inputs/data.txt"/></entity>
  <entity name="Display" class="ptolemy.actor.lib.gui.Display"/>
  <relation name="r"/>
  <link port="Read.output" relation="r"/><link port="Display.input" relation="r"/>
</entity>
"""


class Origin:
    """A web server on loopback that serves documents with validators and counts requests."""

    def __init__(self):
        self.documents = {}
        self.requests = []
        self.delay = 0.0
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                origin.requests.append((self.path, dict(self.headers)))
                time.sleep(origin.delay)
                body = origin.documents.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", email.utils.formatdate(usegmt=True))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                origin.uploaded[self.path] = (self.rfile.read(int(self.headers["Content-Length"])),
                                              self.headers.get("Content-Type"))
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.uploaded = {}
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, path):
        return sum(1 for p, _ in self.requests if p == path)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def origin():
    origin = Origin()
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LiveKree(tmp_path_factory.mktemp("fetching"), frontends=("portal",),
                      config_text=CONFIG).start()
    yield server
    server.stop()


def test_second_job_revalidates_and_a_change_is_fetched(server, origin):
    client = server.client("portal")
    origin.documents["/hello.xml"] = (REPO / "workflows" / "hello.xml").read_bytes()
    uri = f"{origin.url}/hello.xml"
    first = client.post("/v1/jobs", {"workflow": uri, "queue": True}).json
    second = client.post("/v1/jobs", {"workflow": uri, "queue": True}).json
    assert origin.count("/hello.xml") == 2
    conditional = origin.requests[-1][1]
    assert conditional.get("If-None-Match") and conditional.get("If-Modified-Since")
    assert first["workflow_sha256"] == second["workflow_sha256"]
    origin.documents["/hello.xml"] = origin.documents["/hello.xml"].replace(
        b"Hello, world", b"Hello again")
    third = client.post("/v1/jobs", {"workflow": uri, "queue": True}).json
    assert third["workflow_sha256"] != first["workflow_sha256"]
    for job, text in ((first, "Hello, world"), (third, "Hello again")):
        assert wait_for_state(client, job["id"], ("FINISHED", "FAILED"))["state"] == "FINISHED"
        messages = client.get(f"/v1/jobs/{job['id']}/messages").json["messages"]
        assert [m["text"] for m in messages] == [text]


def test_concurrent_jobs_on_one_uri_share_one_fetch(server, origin):
    client = server.client("portal")
    origin.documents["/shared.xml"] = (REPO / "workflows" / "hello.xml").read_bytes()
    origin.delay = 0.5
    try:
        with ThreadPoolExecutor(10) as pool:
            replies = list(pool.map(
                lambda _: client.post("/v1/jobs", {"workflow": f"{origin.url}/shared.xml"}),
                range(10)))
    finally:
        origin.delay = 0.0
    assert [r.status for r in replies] == [201] * 10
    assert origin.count("/shared.xml") == 1


def test_inputs_are_staged_into_the_job(server, origin):
    client = server.client("portal")
    origin.documents["/data.txt"] = b"the data"
    uri = client.post("/v1/workflows", body=READER,
                      headers={"Content-Type": "application/xml"}).json["uri"]
    job = client.post("/v1/jobs", {"workflow": uri, "inputs": {"data.txt": f"{origin.url}/data.txt"},
                                   "queue": True}).json
    assert wait_for_state(client, job["id"], ("FINISHED", "FAILED"))["state"] == "FINISHED"
    texts = [m["text"] for m in client.get(f"/v1/jobs/{job['id']}/messages").json["messages"]]
    assert texts[0] == "staging inputs: data.txt" and texts[-1] == "the data"
    assert "staged input data.txt (8 bytes, fetched)" in texts
    record = client.get(f"/v1/jobs/{job['id']}").json
    assert record["inputs"]["data.txt"]["status"] == "staged"
    missing = client.post("/v1/jobs", {"workflow": uri, "queue": True,
                                       "inputs": {"data.txt": f"{origin.url}/nothing"}}).json
    state = wait_for_state(client, missing["id"], ("FINISHED", "FAILED"))
    assert state["state"] == "FAILED" and "404" in state["error"]


def test_feasibility_answers(server, origin):
    client = server.client("portal")
    origin.documents["/input.csv"] = b"1,2,3"
    hello = client.post("/v1/workflows", body=(REPO / "workflows" / "hello.xml").read_bytes(),
                        headers={"Content-Type": "application/xml"}).json["uri"]
    input_uri = f"{origin.url}/input.csv"

    answer = client.post("/v1/feasibility", {"workflow": hello,
                                             "inputs": {"in.csv": input_uri}}).json
    assert answer["feasible"] and answer["start"] == "after_staging"
    assert answer["inputs"] == {"in.csv": "to_fetch"} and answer["estimated_staging_seconds"] is None

    job = client.post("/v1/jobs", {"workflow": hello, "inputs": {"in.csv": input_uri},
                                   "queue": True}).json
    wait_for_state(client, job["id"], ("FINISHED", "FAILED"))
    answer = client.post("/v1/feasibility", {"workflow": hello,
                                             "inputs": {"in.csv": input_uri}}).json
    assert answer["feasible"] and answer["start"] == "now"
    assert answer["inputs"] == {"in.csv": "cached"} and answer["estimated_staging_seconds"] == 0

    script = (b'<entity name="s" class="ptolemy.actor.TypedCompositeActor">'
              b'<property name="SDF Director" class="ptolemy.domains.sdf.kernel.SDFDirector"/>'
              b'<entity name="Py" class="ptolemy.actor.lib.python.PythonScript"/></entity>')
    rejected = client.post("/v1/workflows", body=script,
                           headers={"Content-Type": "application/xml"}).json["uri"]
    answer = client.post("/v1/feasibility", {"workflow": rejected}).json
    assert not answer["feasible"] and answer["start"] is None
    assert any("not allowed on this server" in r for r in answer["reasons"])

    answer = client.post("/v1/feasibility", {"workflow": hello,
                                             "resources": {"cpus": 4096, "backend": "slurm"}}).json
    assert not answer["feasible"]
    assert any(r.startswith("cpus 4096") for r in answer["reasons"])
    assert any(r.startswith("backend slurm") for r in answer["reasons"])

    answer = client.post("/v1/feasibility", {"workflow": hello,
                                             "parameters": {".hello.Nope.x": 1}}).json
    assert not answer["feasible"] and "no such parameter" in answer["reasons"][0]
    assert client.post("/v1/feasibility", {"workflow": "gopher://x/"}).status == 422


def test_feasibility_names_missing_software(tmp_path):
    server = LiveKree(tmp_path, frontends=("portal",), config_text=CONFIG)
    server.env = {"PATH": str(tmp_path / "empty-path")}  # no Rscript, no octave here
    server.start()
    try:
        client = server.client("portal")
        uri = client.post("/v1/workflows",
                          body=(REPO / "workflows" / "r-statistics.xml").read_bytes(),
                          headers={"Content-Type": "application/xml"}).json["uri"]
        answer = client.post("/v1/feasibility", {"workflow": uri}).json
        assert not answer["feasible"]
        assert any("needs R, which is not installed here" in r for r in answer["reasons"])
        reply = client.post("/v1/jobs", {"workflow": uri})
        assert reply.status == 422 and reply.error == "invalid_workflow"
    finally:
        server.stop()


def test_products_are_uploaded_to_outputs_to(server, origin):
    client = server.client("portal")
    reply = client.post("/v1/jobs", {"workflow": f"{origin.url}/nothing.xml",
                                     "resources": {"outputs_to": f"{origin.url}/no-slash"}})
    assert reply.status == 422 and reply.error == "uri_not_allowed"
    job = submit(client, "products.xml", resources={"outputs_to": f"{origin.url}/results/"})
    assert wait_for_state(client, job["id"], ("FINISHED", "FAILED"))["state"] == "FINISHED"
    deadline = time.monotonic() + 60
    while "uploads" not in client.get(f"/v1/jobs/{job['id']}/results").json:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    uploads = client.get(f"/v1/jobs/{job['id']}/results").json["uploads"]
    assert {u["name"] for u in uploads} == {"numbers.txt", "squares.csv", "summary.txt"}
    assert all(u["ok"] for u in uploads)
    body, media_type = origin.uploaded["/results/squares.csv"]
    assert body.splitlines()[3] == b"3,9" and media_type == "text/csv"
    texts = [m["text"] for m in client.get(f"/v1/jobs/{job['id']}/messages?limit=500").json[
        "messages"]]
    assert sum(t.startswith("uploaded ") for t in texts) == 3


def test_a_freshness_window_skips_revalidation(tmp_path, origin):
    server = LiveKree(tmp_path, frontends=("portal",),
                      config_text=CONFIG.replace("[fetch]", "[fetch]\nfreshness_seconds = 3600"))
    server.start()
    try:
        client = server.client("portal")
        origin.documents["/fresh.xml"] = (REPO / "workflows" / "hello.xml").read_bytes()
        for _ in range(3):
            assert client.post("/v1/jobs", {"workflow": f"{origin.url}/fresh.xml"}).status == 201
        assert origin.count("/fresh.xml") == 1
    finally:
        server.stop()
