"""
A live kreed for API tests: a real daemon process on 127.0.0.1 (a free
port), its own CA, server certificate and frontends, and a client built on
the standard library's ssl and http.client (not on KREE's own code), which
checks every response against the OpenAPI document.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import psutil
import referencing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from kree import credentials, pki
from kree.config import load_config
from kree.store.frontends import FrontendsStore
from kree.store.pool import DBPool
from kree.store.engine import create_engine
from kree.store import migrate

REPO = Path(__file__).resolve().parent.parent
OPENAPI = json.loads((REPO / "kree" / "api" / "openapi.json").read_text())
_REGISTRY = referencing.Registry().with_resource(
    "urn:kree:openapi",
    referencing.Resource.from_contents(OPENAPI, default_specification=referencing.jsonschema.DRAFT202012),
)


class SchemaMismatch(AssertionError):
    pass


def _operation(method: str, path: str) -> tuple[str, dict]:
    path = path.split("?")[0]
    for template, operations in OPENAPI["paths"].items():
        regex = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(regex, path) and method.lower() in operations:
            return template, operations[method.lower()]
    raise SchemaMismatch(f"{method} {path} is not in the OpenAPI document")


def _resolve(ref_or_obj: dict) -> tuple[dict, str]:
    """Follow a $ref inside the document; the object and its JSON pointer."""
    pointer = None
    while "$ref" in ref_or_obj:
        pointer = ref_or_obj["$ref"]
        node = OPENAPI
        for part in pointer.lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        ref_or_obj = node
    return ref_or_obj, pointer


def check_response(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """The response must be documented, and a JSON body must match its schema."""
    template, operation = _operation(method, path)
    responses = operation.get("responses", {})
    spec = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
    if spec is None:
        raise SchemaMismatch(f"{method} {template}: status {status} is not documented")
    spec, _ = _resolve(spec)
    if not body or method == "HEAD":
        return
    media = content_type.split(";")[0].strip()
    content = spec.get("content", {})
    ranges = (media, media.split("/")[0] + "/*", "*/*")
    documented = next((m for m in ranges if m in content), None)
    if documented is None:
        raise SchemaMismatch(f"{method} {template} {status}: media type {media} not documented")
    media = documented
    if media != "application/json":
        return
    schema = content[media].get("schema", {})
    if "$ref" in schema:
        schema = {"$ref": "urn:kree:openapi" + schema["$ref"]}
    validator = jsonschema.Draft202012Validator(schema, registry=_REGISTRY)
    errors = sorted(validator.iter_errors(json.loads(body)), key=lambda e: e.path)
    if errors:
        raise SchemaMismatch(
            f"{method} {path} {status}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])
        )


@attrs.define
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json["error"]["code"]


class Client:
    """An HTTPS client presenting one frontend's certificate."""

    def __init__(self, server: "LiveKree", cert: Path | None, key: Path | None,
                 *, ca: Path | None = None, minimum=None, maximum=None) -> None:
        self.server = server
        context = ssl.create_default_context(cafile=str(ca or server.ca_path))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key))
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
        self.context = context

    def request(self, method: str, path: str, *, json_body: Any = None, body: bytes | None = None,
                headers: dict[str, str] | None = None, check: bool = True) -> Reply:
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        connection = http.client.HTTPSConnection(
            "localhost", self.server.port, context=self.context, timeout=30
        )
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            connection.close()
        if check:
            check_response(method, path, reply.status, reply.headers.get("content-type", ""), data)
        return reply

    def get(self, path, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path, json_body=None, **kw) -> Reply:
        return self.request("POST", path, json_body=json_body, **kw)

    def put(self, path, json_body=None, **kw) -> Reply:
        return self.request("PUT", path, json_body=json_body, **kw)

    def patch(self, path, json_body=None, **kw) -> Reply:
        return self.request("PATCH", path, json_body=json_body, **kw)

    def delete(self, path, **kw) -> Reply:
        return self.request("DELETE", path, **kw)


class LiveKree:
    """A kreed process with a state directory of its own."""

    def __init__(self, base: Path, *, frontends=("portal", "gateway"), config_text: str = "") -> None:
        self.base = base
        self.state_dir = base / "state"
        self.config_path = base / "kree.toml"
        self.config_path.write_text(f'state_dir = "state"\n{config_text}')
        self.config = load_config(self.config_path)
        credentials.init_ca(self.config)
        credentials.issue_server(self.config, ["localhost", "127.0.0.1"])
        pool = DBPool(create_engine(self.config.store_url), reactor=None)
        pool.run_in_thread(migrate.upgrade)
        store = FrontendsStore(pool)
        for name in frontends:
            issued = credentials.issue_frontend(self.config, name)
            pool.run_in_thread(store.add_thd, name, issued.fingerprint, issued.subject)
        pool.stop()
        self.ca_path = self.config.tls_path("ca")
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.extra_args: list[str] = []
        self.env: dict[str, str] = {}

    def start(self, timeout: float = 30) -> "LiveKree":
        self.stderr_path = self.base / f"kreed-{time.monotonic_ns()}.err"
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from kree.daemon import main; main()",
             "--config", str(self.config_path), "--listen", "127.0.0.1:0", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=self._stderr, cwd=self.base,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr_path.read_text().splitlines():
                if line.startswith("{"):
                    record = json.loads(line)
                    if "frontend API listening" in record["message"]:
                        self.port = record["port"]
            if self.port and "running (pid" in self.stderr_path.read_text():
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"kreed exited {self.process.returncode}: "
                                     f"{self.stderr_path.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"kreed did not start: {self.stderr_path.read_text()}")

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()
        return self.process.returncode

    @property
    def log(self) -> str:
        return self.stderr_path.read_text()

    def frontend_files(self, name: str) -> tuple[Path, Path]:
        return credentials.frontend_paths(self.config, name)

    def client(self, name: str = "portal", **kwargs) -> Client:
        cert, key = self.frontend_files(name)
        return Client(self, cert, key, **kwargs)

    def admin(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kree.admin", "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=60,
        )

    def load_ca(self) -> pki.Issued:
        return credentials.load_ca(self.config)


def write_issued(directory: Path, name: str, issued: pki.Issued) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    pki.save(issued, cert, key)
    return cert, key


def make_crl(ca: pki.Issued, revoked: list[x509.Certificate]) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - datetime.timedelta(minutes=1))
        .next_update(now + datetime.timedelta(days=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - datetime.timedelta(minutes=1))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


REPO_WORKFLOWS = REPO / "workflows"


def wait_for_state(client: Client, job_id: str, states, timeout: float = 120) -> dict:
    """Poll the job until its state is one of C{states}; its state document."""
    states = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(f"/v1/jobs/{job_id}/state").json
        if state["state"] in states:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stayed {state['state']}, wanted {states}")
        time.sleep(0.05)


def submit(client: Client, workflow: str, parameters=None, resources=None, queue=True) -> dict:
    """Upload a bundled workflow and create (and queue) a job for it."""
    data = (REPO_WORKFLOWS / workflow).read_bytes()
    uri = client.post("/v1/workflows", body=data, headers={"Content-Type": "application/xml"}).json["uri"]
    body = {"workflow": uri, "queue": queue}
    if parameters:
        body["parameters"] = parameters
    if resources:
        body["resources"] = resources
    reply = client.post("/v1/jobs", body)
    assert reply.status == 201, reply.body
    return reply.json


def kill_active_jobs(client: Client) -> None:
    """Kill every job of the client's frontend that may still have an engine."""
    for job in client.get("/v1/jobs?limit=500").json["jobs"]:
        if job["state"] not in ("NEW", "FINISHED", "FAILED", "ABORTED"):
            client.post(f"/v1/jobs/{job['id']}/kill")


def job_processes(job_id: str) -> list:
    """Every process of a job's tree, found by its KREE_JOB_ID marker."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get("KREE_JOB_ID") == job_id:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def hold_the_queue(server: LiveKree) -> Client:
    """Occupy the single engine slot with a long job of the "holder" frontend."""
    client = server.client("holder")
    job = submit(client, "sleep-loop.xml",
                 parameters={".sleeper.SDF Director.iterations": 1_000_000})
    wait_for_state(client, job["id"], "RUNNING")
    client.job_id = job["id"]
    return client
