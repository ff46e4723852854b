"""
Fetching by URI (kree.fetch) against a real HTTP server on loopback: the
cache and its revalidation, shared concurrent fetches, redirects, limits,
refusals, file: roots and uploaded workflows; on SQLite and PostgreSQL.
"""

import hashlib
import json
import os

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.ssl import PrivateCertificate
from twisted.web import resource, server

from kree import pki, urlguard
from kree.config import load_config
from kree.fetch import Fetcher, FetchError, store_document
from kree.httpclient import PinnedAgent, ServerTLSPolicy

MAX_BYTES = 1000
FIRST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


class Origin(resource.Resource):
    """A web server that remembers every request and misbehaves on demand."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict]] = []
        self.body = b"<entity name='first'/>"
        self.etag = '"v1"'
        self.last_modified = FIRST_MODIFIED
        self.timers = []

    def count(self, path: str | None = None) -> int:
        return sum(1 for p, _ in self.requests if path is None or p == path)

    def render_GET(self, request):
        path = request.path.decode()
        self.requests.append((path, {
            "if-none-match": request.getHeader("if-none-match"),
            "if-modified-since": request.getHeader("if-modified-since")}))
        if path == "/doc":
            request.setHeader(b"etag", self.etag.encode())
            request.setHeader(b"last-modified", self.last_modified.encode())
            if request.getHeader("if-none-match") == self.etag:
                request.setResponseCode(304)
                return b""
            return self.body
        if path.startswith("/redirect/"):  # /redirect/3 -> /redirect/2 -> ... -> /doc
            left = int(path.rsplit("/", 1)[1])
            return self.redirect(request, f"/redirect/{left - 1}" if left > 1 else "/doc")
        if path == "/to-elsewhere":
            return self.redirect(request, "http://elsewhere.example/doc", 301)
        if path == "/to-private":
            return self.redirect(request, "http://10.0.0.1/doc", 307)
        if path == "/big-with-length":
            return b"x" * (MAX_BYTES + 1)
        if path == "/big-chunked":  # an endless chunked body: only stopping early ends it
            self.stream(request)
            return server.NOT_DONE_YET
        if path == "/slow":
            self.later(request, 3.0, lambda: (request.write(b"late"), request.finish()))
            return server.NOT_DONE_YET
        if path == "/error":
            request.setResponseCode(500)
            return b"it broke"
        request.setResponseCode(404)
        return b"no such thing"

    def redirect(self, request, location: str, code: int = 302) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"location", location.encode())
        return b"moved"

    def later(self, request, delay, fn):
        call = reactor.callLater(delay, fn)
        self.timers.append(call)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())

    def stream(self, request):
        if request.finished or request._disconnected:
            return
        request.write(b"y" * 300)
        self.later(request, 0.01, lambda: self.stream(request))

    def stop(self) -> None:
        for call in self.timers:
            if call.active():
                call.cancel()


@pytest.fixture
def origin():
    site = server.Site(Origin())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    site.resource.base = f"http://127.0.0.1:{port.getHost().port}"
    yield site.resource
    site.resource.stop()
    port.stopListening()


@pytest.fixture
def tls_origin(tmp_path):
    """The same origin over https, with a certificate for 127.0.0.1 from a CA of its own."""
    ca = pki.create_ca("Origin CA")
    issued = pki.issue(ca, "origin", server_names=["127.0.0.1"])
    (tmp_path / "origin-ca.pem").write_bytes(pki.cert_pem(ca.certificate))
    options = PrivateCertificate.loadPEM(
        pki.cert_pem(issued.certificate) + pki.key_pem(issued.key)).options()
    site = server.Site(Origin())
    port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    site.resource.base = f"https://127.0.0.1:{port.getHost().port}"
    site.resource.ca = str(tmp_path / "origin-ca.pem")
    yield site.resource
    site.resource.stop()
    port.stopListening()


@pytest.fixture
def roots(tmp_path):
    root = tmp_path / "workflows"
    root.mkdir()
    return root


@pytest.fixture
def make_config(tmp_path, roots):
    def make(name="kree", **fetch):
        settings = {"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True,
                    "file_roots": [str(roots)], "max_bytes": MAX_BYTES,
                    "timeout_seconds": 10.0, **fetch}
        lines = [f"state_dir = {json.dumps(str(tmp_path / 'state'))}", "[fetch]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return load_config(path)
    return make


@pytest.fixture
def config(make_config):
    return make_config()


@pytest_twisted.async_yield_fixture
async def fetchers(store):
    """Make Fetchers on the real reactor; their connection pools are closed afterwards."""
    made = []

    def make(config, **kwargs):
        fetcher = Fetcher(config, store, reactor, **kwargs)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


@pytest.fixture
def fetcher(fetchers, config):
    return fetchers(config)


async def refused(fetcher, uri, code):
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch(uri)
    assert caught.value.code == code, caught.value.message
    assert caught.value.status == 422
    assert uri in caught.value.message
    return caught.value


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- http: the cache and revalidation ----------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_second_fetch_revalidates_and_reuses_the_body(fetcher, origin, store, config):
    uri = origin.base + "/doc"
    first = await fetcher.fetch(uri)
    assert first.fetched and first.sha256 == sha(origin.body) and first.size == len(origin.body)
    assert first.path == config.cache_dir / first.sha256 and first.path.read_bytes() == origin.body
    assert (first.etag, first.last_modified) == ('"v1"', FIRST_MODIFIED)
    assert origin.requests[0][1] == {"if-none-match": None, "if-modified-since": None}
    entry = await store.cache.get(uri)
    assert (entry.sha256, entry.size, entry.etag) == (first.sha256, first.size, '"v1"')

    second = await fetcher.fetch(uri)
    assert origin.count() == 2
    assert origin.requests[1][1] == {"if-none-match": '"v1"', "if-modified-since": FIRST_MODIFIED}
    assert not second.fetched
    assert (second.sha256, second.path, second.size) == (first.sha256, first.path, first.size)
    revalidated = await store.cache.get(uri)
    assert revalidated.checked_at >= entry.checked_at and revalidated.fetched_at == entry.fetched_at


@pytest_twisted.ensureDeferred
async def test_a_changed_document_is_fetched_again(fetcher, origin, store):
    uri = origin.base + "/doc"
    first = await fetcher.fetch(uri)
    origin.body, origin.etag = b"<entity name='second'/>", '"v2"'
    origin.last_modified = "Thu, 22 Oct 2015 07:28:00 GMT"
    second = await fetcher.fetch(uri)
    assert origin.requests[1][1]["if-none-match"] == '"v1"'
    assert second.fetched and second.sha256 == sha(origin.body) != first.sha256
    assert second.path.read_bytes() == origin.body and first.path.exists()
    entry = await store.cache.get(uri)
    assert (entry.sha256, entry.etag, entry.last_modified) == (
        second.sha256, '"v2"', "Thu, 22 Oct 2015 07:28:00 GMT")
    third = await fetcher.fetch(uri)
    assert not third.fetched and third.sha256 == second.sha256 and origin.count() == 3


@pytest_twisted.ensureDeferred
async def test_a_missing_body_makes_the_fetch_unconditional(fetcher, origin):
    uri = origin.base + "/doc"
    first = await fetcher.fetch(uri)
    first.path.unlink()
    again = await fetcher.fetch(uri)
    assert again.fetched and again.path.read_bytes() == origin.body
    assert origin.requests[1][1]["if-none-match"] is None


@pytest_twisted.ensureDeferred
async def test_concurrent_fetches_share_one_request(fetcher, origin):
    uri = origin.base + "/doc"
    results = await DeferredList([Deferred.fromCoroutine(fetcher.fetch(uri)) for _ in range(10)],
                                 consumeErrors=True)
    assert all(ok for ok, _ in results)
    assert len({r for _, r in results}) == 1 and results[0][1].fetched
    assert origin.count() == 1
    # Errors are shared too.
    failures = await DeferredList(
        [Deferred.fromCoroutine(fetcher.fetch(origin.base + "/error")) for _ in range(10)],
        consumeErrors=True)
    assert all(not ok and f.value.code == "fetch_failed" for ok, f in failures)
    assert origin.count("/error") == 1


@pytest_twisted.ensureDeferred
async def test_within_the_freshness_window_no_request_is_made(fetchers, config, origin):
    fetcher = fetchers(config, freshness_seconds=60)
    uri = origin.base + "/doc"
    first = await fetcher.fetch(uri)
    second = await fetcher.fetch(uri)
    assert first.fetched and not second.fetched and second.sha256 == first.sha256
    assert origin.count() == 1


@pytest_twisted.ensureDeferred
async def test_redirects_are_followed_by_hand_up_to_five(fetcher, origin):
    result = await fetcher.fetch(origin.base + "/redirect/3")
    assert result.fetched and result.path.read_bytes() == origin.body
    assert [p for p, _ in origin.requests] == ["/redirect/3", "/redirect/2", "/redirect/1", "/doc"]
    error = await refused(fetcher, origin.base + "/redirect/6", "fetch_failed")
    assert "more than 5 redirects" in error.message
    assert origin.count() == 4 + 6


# -- limits and failures ------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_content_length_over_the_limit_fails_before_reading(fetcher, origin):
    error = await refused(fetcher, origin.base + "/big-with-length", "too_large")
    assert "Content-Length" in error.message and error.details["size"] == MAX_BYTES + 1


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_the_limit_stops_the_reading(fetcher, origin):
    # The body never ends: only stopping at the limit ends this fetch.
    error = await refused(fetcher, origin.base + "/big-chunked", "too_large")
    assert f"limit of {MAX_BYTES} bytes" in error.message


@pytest_twisted.ensureDeferred
async def test_a_slow_server_hits_the_timeout(fetchers, make_config, origin):
    fetcher = fetchers(make_config("slow", timeout_seconds=0.5))
    started = reactor.seconds()
    error = await refused(fetcher, origin.base + "/slow", "timeout")
    assert reactor.seconds() - started < 2.5
    assert "0.5 s" in error.message


@pytest_twisted.ensureDeferred
async def test_a_server_error_fails_naming_the_status(fetcher, origin, store):
    error = await refused(fetcher, origin.base + "/error", "fetch_failed")
    assert "500" in error.message and error.details["status"] == 500
    assert await store.cache.get(origin.base + "/error") is None


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_fails(fetcher):
    port = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    await refused(fetcher, f"http://127.0.0.1:{number}/doc", "fetch_failed")


@pytest_twisted.ensureDeferred
async def test_https_servers_are_verified(fetcher, fetchers, config, tls_origin):
    # Not trusted by the system's store: refused before any request.
    error = await refused(fetcher, tls_origin.base + "/doc", "fetch_failed")
    assert tls_origin.count() == 0
    # Trusted (the same policy, given the origin's CA): fetched and revalidated.
    trusting = fetchers(config, agent=PinnedAgent(reactor, connect_timeout=10,
                                                  policy=ServerTLSPolicy(tls_origin.ca)))
    first = await trusting.fetch(tls_origin.base + "/redirect/1")
    second = await trusting.fetch(tls_origin.base + "/redirect/1")
    assert first.fetched and not second.fetched and tls_origin.count() == 4
    assert error.message.startswith(f"fetching {tls_origin.base}/doc failed")


# -- refusals -------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_internal_addresses_are_refused_unless_allowed(fetchers, make_config, origin):
    fetcher = fetchers(make_config("strict", allow_private_addresses=False,
                                   allowed_hosts=["*"]))
    port = origin.base.rsplit(":", 1)[1]
    for uri in (f"http://127.0.0.1:{port}/doc", f"http://[::1]:{port}/doc",
                "http://10.0.0.1/doc"):
        error = await refused(fetcher, uri, "uri_not_allowed")
        assert "internal address" in error.message
    assert origin.count() == 0


@pytest_twisted.ensureDeferred
async def test_hosts_off_the_allow_list_are_refused(fetcher, origin):
    error = await refused(fetcher, "http://elsewhere.example/doc", "uri_not_allowed")
    assert "not on the allowed list" in error.message
    error = await refused(fetcher, origin.base + "/to-elsewhere", "uri_not_allowed")
    assert "redirect" in error.message and "elsewhere.example" in error.message
    assert origin.count() == 1


@pytest_twisted.ensureDeferred
async def test_a_redirect_to_a_private_address_is_refused(fetchers, make_config, origin,
                                                          monkeypatch):
    # Only the origin on loopback passes as public here, so its redirect to
    # 10.0.0.1 is what the hop guard must catch.
    public = urlguard.address_allowed
    monkeypatch.setattr(urlguard, "address_allowed", lambda a: a == "127.0.0.1" or public(a))
    fetcher = fetchers(make_config("strict", allow_private_addresses=False,
                                   allowed_hosts=["*"]))
    error = await refused(fetcher, origin.base + "/to-private", "uri_not_allowed")
    assert "10.0.0.1" in error.message and "internal address" in error.message
    assert origin.count() == 1


@pytest_twisted.ensureDeferred
async def test_other_schemes_are_refused(fetcher):
    for uri in ("gopher://127.0.0.1/1", "ftp://127.0.0.1/x.xml", "data:,hello", "x.xml",
                "kree:workflow/not-a-hash"):
        await refused(fetcher, uri, "uri_not_allowed")


# -- file: ------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_file_under_a_root_is_cached_by_mtime_and_size(fetcher, roots, store):
    path = roots / "sub" / "model.xml"
    path.parent.mkdir()
    path.write_bytes(b"<entity name='a'/>")
    uri = path.as_uri()
    first = await fetcher.fetch(uri)
    assert first.fetched and first.sha256 == sha(b"<entity name='a'/>") and first.etag is None
    assert first.last_modified and first.path.read_bytes() == path.read_bytes()
    second = await fetcher.fetch(uri)
    assert not second.fetched and second.sha256 == first.sha256
    # Same size, new mtime: read again.
    path.write_bytes(b"<entity name='b'/>")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    third = await fetcher.fetch(uri)
    assert third.fetched and third.sha256 == sha(b"<entity name='b'/>")
    assert (await store.cache.get(uri)).sha256 == third.sha256
    # A path through "..", a symlink, that stays under the root is fine.
    (roots / "link.xml").symlink_to(path)
    via = await fetcher.fetch(f"file://{roots}/sub/../link.xml")
    assert via.sha256 == third.sha256


@pytest_twisted.ensureDeferred
async def test_files_outside_the_roots_are_refused(fetcher, roots, tmp_path):
    outside = tmp_path / "outside.xml"
    outside.write_bytes(b"<entity name='secret'/>")
    (roots / "escape.xml").symlink_to(outside)
    for uri in (outside.as_uri(), f"file://{roots}/../outside.xml",
                f"file://{roots}/%2E%2E/outside.xml", (roots / "escape.xml").as_uri(),
                "file:///etc/passwd", f"file://otherhost{outside}"):
        await refused(fetcher, uri, "uri_not_allowed")


@pytest_twisted.ensureDeferred
async def test_file_failures(fetcher, roots):
    await refused(fetcher, (roots / "missing.xml").as_uri(), "fetch_failed")
    await refused(fetcher, roots.as_uri(), "fetch_failed")  # a directory
    big = roots / "big.xml"
    big.write_bytes(b"z" * (MAX_BYTES + 1))
    await refused(fetcher, big.as_uri(), "too_large")


# -- kree:workflow/ ----------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_uploaded_workflows_come_from_the_cache(fetcher, config, store):
    data = b"<entity name='uploaded'/>"
    digest = sha(data)
    store_document(config.cache_dir, digest, data)
    await store.cache.record_fetch(f"kree:workflow/{digest}", sha256=digest, size=len(data))
    result = await fetcher.fetch(f"kree:workflow/{digest}")
    assert not result.fetched and result.sha256 == digest and result.size == len(data)
    assert result.path.read_bytes() == data
    error = await refused(fetcher, "kree:workflow/" + "0" * 64, "fetch_failed")
    assert "no such uploaded workflow" in error.message
