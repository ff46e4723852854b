"""
Uploading a finished job's products (kree.outputs) to a real WebDAV-like
server on loopback: bodies, content types and reports; retries with backoff,
giving up, refusals; the outputs_to check at job creation.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web import resource, server

from kree import urlguard
from kree.config import load_config
from kree.outputs import OutputUploader, UploadOutcome, check_outputs_to

FAST = (0.05, 0.05, 0.05)


class Collection(resource.Resource):
    """Stores PUT bodies by path; fails, forbids, redirects or dawdles on demand."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, dict] = {}
        self.requests: list[str] = []
        self.fail: dict[str, int] = {}  # path -> how many more 500s
        self.slow: dict[str, int] = {}  # path -> how many more answers late
        self.forbidden: set[str] = set()
        self.moved: set[str] = set()
        self.timers = []

    def render_PUT(self, request):
        path = request.path.decode()
        self.requests.append(path)
        if path in self.forbidden:
            request.setResponseCode(403)
            return b"no"
        if path in self.moved:
            request.setResponseCode(307)
            request.setHeader(b"location", b"/elsewhere/")
            return b""
        if self.fail.get(path, 0) > 0:
            self.fail[path] -= 1
            request.setResponseCode(500)
            return b"it broke"
        body = request.content.read()
        if self.slow.get(path, 0) > 0:
            self.slow[path] -= 1
            call = reactor.callLater(5.0, self.finish, request, path, body)
            self.timers.append(call)
            request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
            return server.NOT_DONE_YET
        self.store(request, path, body)
        return b""

    def store(self, request, path, body) -> None:
        self.stored[path] = {"body": body,
                             "content-type": request.getHeader("content-type"),
                             "content-length": request.getHeader("content-length")}
        request.setResponseCode(201)

    def finish(self, request, path, body) -> None:
        self.store(request, path, body)
        request.finish()

    def stop(self) -> None:
        for call in self.timers:
            if call.active():
                call.cancel()


@pytest.fixture
def dav():
    site = server.Site(Collection())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    site.resource.base = f"http://127.0.0.1:{port.getHost().port}"
    yield site.resource
    site.resource.stop()
    port.stopListening()


@pytest.fixture
def make_config(tmp_path):
    def make(name="kree", **fetch):
        settings = {"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True,
                    "timeout_seconds": 2.0, **fetch}
        lines = [f"state_dir = {json.dumps(str(tmp_path / 'state'))}", "[fetch]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return load_config(path)
    return make


@pytest_twisted.async_yield_fixture
async def uploaders(make_config):
    """Make OutputUploaders on the real reactor; their pools are closed afterwards."""
    made = []

    def make(config=None, **kwargs):
        uploader = OutputUploader(config or make_config(), reactor, **kwargs)
        made.append(uploader)
        return uploader

    yield make
    for uploader in made:
        await uploader.close()


@pytest.fixture
def job_dir(tmp_path):
    products = tmp_path / "products"
    products.mkdir()
    return tmp_path


def product(job_dir, name: str, data: bytes) -> None:
    (job_dir / "products" / name).write_bytes(data)


class Reports(list):
    async def __call__(self, level: str, text: str) -> None:
        self.append((level, text))

    def levels(self) -> list[str]:
        return [level for level, _ in self]


# -- uploading ---------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_every_product_is_put_with_its_body_and_type(uploaders, dav, job_dir):
    product(job_dir, "result.csv", b"a,b\n1,2\n")
    product(job_dir, "plot.png", b"\x89PNG" + bytes(range(256)) * 300)  # several chunks
    product(job_dir, "data.bin-x", b"\x00\x01")
    product(job_dir, "a b.txt", b"spaced")
    product(job_dir, ".manifest.json", b"{}")
    product(job_dir, ".manifest.json.tmp", b"{}")
    (job_dir / "products" / "subdir").mkdir()
    (job_dir / "products" / "link.txt").symlink_to(job_dir / "products" / "result.csv")
    reports = Reports()
    outputs_to = dav.base + "/dav/job-1/"

    outcomes = await uploaders().upload(job_dir, outputs_to, reports)

    names = ["a b.txt", "data.bin-x", "plot.png", "result.csv"]
    urls = [outputs_to + "a%20b.txt", outputs_to + "data.bin-x", outputs_to + "plot.png",
            outputs_to + "result.csv"]
    assert outcomes == [UploadOutcome(name=n, url=u, ok=True, status=201, attempts=1, error=None)
                        for n, u in zip(names, urls)]
    assert sorted(dav.stored) == ["/dav/job-1/a%20b.txt", "/dav/job-1/data.bin-x",
                                  "/dav/job-1/plot.png", "/dav/job-1/result.csv"]
    for name in names:
        sent = dav.stored["/dav/job-1/" + name.replace(" ", "%20")]
        data = (job_dir / "products" / name).read_bytes()
        assert sent["body"] == data
        assert sent["content-length"] == str(len(data))
    assert dav.stored["/dav/job-1/result.csv"]["content-type"] == "text/csv"
    assert dav.stored["/dav/job-1/plot.png"]["content-type"] == "image/png"
    assert dav.stored["/dav/job-1/a%20b.txt"]["content-type"] == "text/plain"
    assert dav.stored["/dav/job-1/data.bin-x"]["content-type"] == "application/octet-stream"
    assert reports.levels() == ["info"] * 4
    assert ("info", f"uploaded result.csv (8 bytes) to {outputs_to}result.csv") in reports
    assert len(dav.requests) == 4  # no hidden files, directories or symlinks
    assert outcomes[0].to_json() == {"name": "a b.txt", "url": urls[0], "ok": True,
                                     "status": 201, "attempts": 1, "error": None}


@pytest_twisted.ensureDeferred
async def test_no_products_nothing_sent(uploaders, dav, tmp_path):
    reports = Reports()
    assert await uploaders().upload(tmp_path, dav.base + "/dav/", reports) == []
    assert dav.requests == [] and reports.levels() == ["info"]
    assert "no products" in reports[0][1]


@pytest_twisted.ensureDeferred
async def test_server_errors_are_retried(uploaders, dav, job_dir):
    product(job_dir, "result.csv", b"a,b\n1,2\n")
    dav.fail["/dav/result.csv"] = 2
    reports = Reports()

    (outcome,) = await uploaders(retry_delays=FAST).upload(job_dir, dav.base + "/dav/", reports)

    assert (outcome.ok, outcome.status, outcome.attempts, outcome.error) == (True, 201, 3, None)
    assert dav.stored["/dav/result.csv"]["body"] == b"a,b\n1,2\n"
    assert reports.levels() == ["warning", "warning", "info"]
    assert "500" in reports[0][1] and "attempt 1 of 4" in reports[0][1]
    assert "trying again in 0.05 s" in reports[0][1]


@pytest_twisted.ensureDeferred
async def test_timeouts_are_retried(uploaders, make_config, dav, job_dir):
    product(job_dir, "slow.txt", b"eventually")
    dav.slow["/dav/slow.txt"] = 1
    reports = Reports()
    uploader = uploaders(make_config(timeout_seconds=0.3), retry_delays=FAST)

    (outcome,) = await uploader.upload(job_dir, dav.base + "/dav/", reports)

    assert (outcome.ok, outcome.attempts) == (True, 2)
    assert reports.levels() == ["warning", "info"]
    assert "no answer within 0.3 s" in reports[0][1]
    assert dav.stored["/dav/slow.txt"]["body"] == b"eventually"


@pytest_twisted.ensureDeferred
async def test_forbidden_is_given_up_at_once_and_the_others_still_go(uploaders, dav, job_dir):
    product(job_dir, "a.txt", b"first")
    product(job_dir, "b.txt", b"second")
    dav.forbidden.add("/dav/a.txt")
    reports = Reports()

    first, second = await uploaders(retry_delays=FAST).upload(job_dir, dav.base + "/dav/",
                                                              reports)

    assert (first.ok, first.status, first.attempts) == (False, 403, 1)
    assert "403" in first.error
    assert (second.ok, second.attempts) == (True, 1)
    assert dav.requests == ["/dav/a.txt", "/dav/b.txt"]
    assert reports.levels() == ["error", "info"]
    assert "403" in reports[0][1] and "a.txt" in reports[0][1]


@pytest_twisted.ensureDeferred
async def test_redirects_are_not_followed(uploaders, dav, job_dir):
    product(job_dir, "a.txt", b"first")
    dav.moved.add("/dav/a.txt")
    reports = Reports()

    (outcome,) = await uploaders(retry_delays=FAST).upload(job_dir, dav.base + "/dav/", reports)

    assert (outcome.ok, outcome.status, outcome.attempts) == (False, 307, 1)
    assert "redirects are not followed" in outcome.error
    assert dav.requests == ["/dav/a.txt"] and reports.levels() == ["error"]


@pytest_twisted.ensureDeferred
async def test_given_up_when_the_retries_are_used_up(uploaders, dav, job_dir):
    product(job_dir, "a.txt", b"first")
    dav.fail["/dav/a.txt"] = 100
    reports = Reports()

    (outcome,) = await uploaders(retry_delays=FAST).upload(job_dir, dav.base + "/dav/", reports)

    assert (outcome.ok, outcome.status, outcome.attempts) == (False, 500, 4)
    assert "500" in outcome.error
    assert len(dav.requests) == 4
    assert reports.levels() == ["warning", "warning", "warning", "error"]
    assert "after 4 attempts" in reports[-1][1]


@pytest_twisted.ensureDeferred
async def test_connection_errors_are_retried_then_given_up(uploaders, job_dir):
    product(job_dir, "a.txt", b"first")
    closed = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
    port = closed.getHost().port
    await closed.stopListening()
    reports = Reports()

    (outcome,) = await uploaders(retry_delays=(0.01,)).upload(
        job_dir, f"http://127.0.0.1:{port}/dav/", reports)

    assert (outcome.ok, outcome.status, outcome.attempts) == (False, None, 2)
    assert "refused" in outcome.error.lower()
    assert reports.levels() == ["warning", "error"]


@pytest_twisted.ensureDeferred
async def test_private_addresses_are_refused_unless_allowed(uploaders, make_config, dav,
                                                            job_dir):
    product(job_dir, "a.txt", b"first")
    reports = Reports()
    uploader = uploaders(make_config("strict", allow_private_addresses=False), retry_delays=FAST)

    (outcome,) = await uploader.upload(job_dir, dav.base + "/dav/", reports)

    assert (outcome.ok, outcome.status, outcome.attempts) == (False, None, 1)
    assert "internal address" in outcome.error and "allow_private_addresses" in outcome.error
    assert dav.requests == []
    assert reports.levels() == ["error"]


@pytest_twisted.ensureDeferred
async def test_an_unacceptable_outputs_to_uploads_nothing(uploaders, dav, job_dir):
    product(job_dir, "a.txt", b"first")
    reports = Reports()

    (outcome,) = await uploaders().upload(job_dir, dav.base + "/dav", reports)

    assert (outcome.ok, outcome.attempts) == (False, 0)
    assert "must end with '/'" in outcome.error
    assert dav.requests == [] and reports.levels() == ["error"]


# -- checking outputs_to at job creation ---------------------------------------------

def test_check_outputs_to_accepts_a_collection():
    uri = "https://dav.example.org/remote.php/dav/files/me/job-1/"
    assert check_outputs_to(uri, ["*.example.org"]) == uri
    assert check_outputs_to("http://store.example/up/", ["*"]) == "http://store.example/up/"


@pytest.mark.parametrize("uri, hosts, says", [
    ("ftp://dav.example.org/out/", ["*"], "scheme 'ftp' is not allowed"),
    ("file:///tmp/out/", ["*"], "scheme 'file' is not allowed"),
    ("https://dav.example.org/out", ["*"], "must end with '/'"),
    ("https://dav.example.org", ["*"], "must end with '/'"),
    ("https://evil.example/out/", ["*.example.org"], "host 'evil.example' is not on the allowed"),
    ("https://me:secret@dav.example.org/out/", ["*"], "credentials"),
    ("https://dav.example.org/out/?sig=1", ["*"], "query or fragment"),
    ("https://dav.example.org/ou\u0308t/", ["*"], "ASCII"),
    ("", ["*"], "a URL of at most"),
    (None, ["*"], "a URL of at most"),
])
def test_check_outputs_to_refusals(uri, hosts, says):
    with pytest.raises(urlguard.URLNotAllowed) as caught:
        check_outputs_to(uri, hosts)
    error = caught.value
    assert error.status == 422 and error.code == "uri_not_allowed"
    assert error.message.startswith("outputs_to: ") and says in error.message, error.message
