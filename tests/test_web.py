"""
kree.web, what every dialect shares, on a real mutual-TLS listener in this
process: requests go to the dialect whose prefix they start with (the first
dialect takes the rest), every error is rendered in that dialect's shape,
authentication and the audit trail are the same for all.
"""

import http.client
import json
import ssl

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.threads import deferToThread

from kree import credentials
from kree.config import load_config
from kree.errors import JobNotFound
from kree.frontends import FrontendService
from kree.web import tls
from kree.web.resource import JsonDialect, WebResource
from kree.web.routing import Response, Router
from kree.web.site import WebSite
from waiting import until_awaited


class MsgDialect(JsonDialect):
    """A dialect with WES's error shape, {msg, status_code}."""

    def error_body(self, status, error):
        return {"msg": error.message, "status_code": status}


async def _ok(call):
    return {"frontend": call.frontend.name, "path": call.request.path.decode()}


async def _created(call):
    return Response(201, {"made": call.params["name"]}, {"location": "/there"})


async def _missing_job(call):
    raise JobNotFound("20261203T000000Z-abcdef")


def _router(prefix: str) -> Router:
    router = Router()
    router.add("GET", f"{prefix}/ok", _ok)
    router.add("POST", f"{prefix}/things/{{name}}", _created, "thing.create")
    router.add("GET", f"{prefix}/job", _missing_job)
    return router


@pytest.fixture
def site(tmp_path, store):
    """/v1 (the default) and /ga4gh/wes/v1 on one listener; portal registered, stranger not."""
    (tmp_path / "kree.toml").write_text('state_dir = "state"\n')
    config = load_config(tmp_path / "kree.toml")
    credentials.init_ca(config)
    credentials.issue_server(config, ["localhost"])
    portal = credentials.issue_frontend(config, "portal")
    store.pool.run_in_thread(store.frontends.add_thd, "portal", portal.fingerprint,
                             portal.subject)
    credentials.issue_frontend(config, "stranger")
    resource = WebResource([JsonDialect("/v1", _router("/v1")),
                            MsgDialect("/ga4gh/wes/v1", _router("/ga4gh/wes/v1"))],
                           FrontendService(store))
    endpoint = SSL4ServerEndpoint(reactor, 0, tls.server_options(config), interface="127.0.0.1")
    port = pytest_twisted.blockon(endpoint.listen(WebSite(resource, 4096, reactor)))
    yield config, port.getHost().port
    pytest_twisted.blockon(port.stopListening())


def _request(config, port, name, method, path, body=None):
    context = ssl.create_default_context(cafile=str(config.tls_path("ca")))
    cert, key = credentials.frontend_paths(config, name)
    context.load_cert_chain(str(cert), str(key))
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.getheader("content-type"), json.loads(response.read())
    finally:
        connection.close()


def request(site, method, path, *, name="portal", body=None):
    config, port = site
    return deferToThread(_request, config, port, name, method, path, body)


@pytest_twisted.ensureDeferred
async def test_each_prefix_reaches_its_dialect(site):
    assert await request(site, "GET", "/v1/ok") == (
        200, "application/json; charset=utf-8", {"frontend": "portal", "path": "/v1/ok"})
    status, _, body = await request(site, "GET", "/ga4gh/wes/v1/ok")
    assert (status, body) == (200, {"frontend": "portal", "path": "/ga4gh/wes/v1/ok"})
    status, _, body = await request(site, "POST", "/ga4gh/wes/v1/things/a%20b")
    assert (status, body) == (201, {"made": "a b"})


@pytest_twisted.ensureDeferred
async def test_errors_come_in_the_dialects_shape(site):
    status, _, body = await request(site, "GET", "/ga4gh/wes/v1/job")
    assert (status, body) == (404, {"msg": "no job '20261203T000000Z-abcdef'",
                                    "status_code": 404})
    status, _, body = await request(site, "GET", "/ga4gh/wes/v1/nowhere")
    assert (status, body) == (404, {"msg": "no such resource: /ga4gh/wes/v1/nowhere",
                                    "status_code": 404})
    status, _, body = await request(site, "DELETE", "/ga4gh/wes/v1/ok")
    assert (status, body["status_code"]) == (405, 405)
    # The same refusal under /v1 has /v1's shape.
    status, _, body = await request(site, "GET", "/v1/job")
    assert (status, body["error"]["code"]) == (404, "job_not_found")


@pytest_twisted.ensureDeferred
async def test_paths_no_prefix_claims_go_to_the_first_dialect(site):
    # A prefix is a whole path segment: /ga4gh/wes/v10 is not /ga4gh/wes/v1's.
    for path in ("/elsewhere", "/ga4gh/wes/v10/ok", "/"):
        status, _, body = await request(site, "GET", path)
        assert (status, body["error"]["code"]) == (404, "not_found"), path


@pytest_twisted.ensureDeferred
async def test_an_unregistered_certificate_is_refused_in_the_dialects_shape(site, store):
    status, _, body = await request(site, "GET", "/ga4gh/wes/v1/ok", name="stranger")
    assert (status, body) == (403, {"msg": "this certificate is not registered as a frontend",
                                    "status_code": 403})
    status, _, body = await request(site, "GET", "/v1/ok", name="stranger")
    assert (status, body["error"]["code"]) == (403, "unknown_frontend")
    # Refusals are audited whatever the dialect, with the error's code (once answered).
    refused = []

    async def both_refusals():
        refused[:] = [r for r in await store.audit.list() if r.outcome == "refused"]
        return len(refused) == 2

    await until_awaited(both_refusals, "both refusals in the audit log")
    assert [r.details["error"] for r in refused] == ["unknown_frontend", "unknown_frontend"]


@pytest_twisted.ensureDeferred
async def test_changes_are_audited_under_the_routes_action(site, store):
    await request(site, "POST", "/ga4gh/wes/v1/things/x")
    # The record is written once the answer is sent: wait for it.
    records = []

    async def audited():
        records[:] = await store.audit.list()
        return records

    await until_awaited(audited, "the audit record")
    (record,) = records
    assert (record.actor, record.action, record.outcome, record.status) == (
        "portal", "thing.create", "ok", 201)
