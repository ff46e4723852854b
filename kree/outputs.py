"""
Results to storage: uploading a finished job's products (issue 7).

A job may name C{outputs_to} in its resources: an C{https:} or C{http:} URI
of a WebDAV collection or of a pre-signed upload prefix, ending with C{/}.
L{check_outputs_to} checks it when the job is created (syntax only: scheme
http or https, a host on the admin's allow-list, [fetch] allowed_hosts, no
credentials, no query or fragment, ASCII, a trailing C{/}); a refusal is a
L{kree.urlguard.URLNotAllowed} (HTTP 422, C{uri_not_allowed}) whose message
starts with C{outputs_to:}.

When the job finishes, L{OutputUploader.upload} sends each product, every
regular file directly in C{JOBDIR/products/} whose name does not start with
C{.} (so not the engine's C{.manifest.json}; no symlinks, no
subdirectories), in name order, with an HTTP C{PUT} to C{outputs_to} + the
URL-quoted product name.  The body is streamed from disk: the file is opened
in the reactor's thread pool (no following a symlink swapped in since) and
sent by a C{FileBodyProducer}, which sets Content-Length; Content-Type is
guessed from the name with L{mimetypes} (C{application/octet-stream} when
unknown), the same media type the results document shows.

Every attempt is guarded like a fetch (L{kree.fetch}): before each one,
L{kree.urlguard.check_reachable} checks the scheme, the host allow-list and
every address the host resolves to (no loopback, private, link-local ...
unless [fetch] allow_private_addresses).  Requests go through a
L{kree.httpclient.PinnedAgent}: to the addresses just checked, never to a
second resolution of the name, over a persistent pool; https servers are verified
with L{kree.httpclient.ServerTLSPolicy} (the system's trust store).  Each
attempt, the guard, the request and reading the answer, is bounded by [fetch]
timeout_seconds (0: no limit).  [fetch] max_bytes does not apply: products
are the job's own files.

Outcomes of an attempt:

 - 2xx: uploaded (WebDAV answers 201 Created or 204 No Content).
 - 5xx, 408, 429, a connection error, a timeout, a host that cannot be
   resolved: tried again after the next of C{retry_delays} (default 1, 5, 30
   and 120 s, so five attempts at most); when they are used up the upload is
   given up.
 - 3xx: given up at once; redirects are not followed (a redirected PUT would
   send the product somewhere the guard has not checked).
 - any other 4xx: given up at once, trying again would not help.
 - refused by the guard, or the product cannot be read: given up at once.

Products are uploaded one after another (one connection, one open file at a
time), and a product that fails does not stop the others.  Every outcome is
reported through the C{report(level, text)} callback, which
L{FinishedJobUploads} (an observer of the job service) turns into job
messages: C{info} for an upload (C{uploaded result.csv (8 bytes) to
https://.../result.csv}), C{warning} for each failed attempt that will be
retried, C{error} when an upload is given up.  L{upload} answers one
L{UploadOutcome} per product, for the results document
(L{UploadOutcome.to_json}).
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import attrs
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from kree import __version__, jobdir, urlguard
from kree.config import Config
from kree.httpclient import DiscardBody, PinnedAgent, describe_failure, timed_out
from kree.states import JobState

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1, 5, 30, 120)
DEFAULT_MEDIA_TYPE = "application/octet-stream"
PRODUCTS_DIR = "products"

Report = Callable[[str, str], Awaitable[None]]


@attrs.frozen
class UploadOutcome:
    """Where one product went (or why it did not)."""

    name: str
    url: str
    ok: bool
    # The last HTTP status received; None if no answer came.
    status: int | None
    # Attempts made: 0 if none could be (outputs_to refused).
    attempts: int
    # Why the upload was given up (None when ok).
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def check_outputs_to(uri: str, allowed_hosts: list[str]) -> str:
    """The C{outputs_to} URI if it is acceptable; raises L{urlguard.URLNotAllowed} (422)."""
    try:
        parts = urlguard.check_url(uri, allowed_hosts)
    except urlguard.URLNotAllowed as e:
        raise urlguard.URLNotAllowed(f"outputs_to: {e.message}",
                                     **{**e.details, "field": "outputs_to"}) from None
    try:
        uri.encode("ascii")
    except UnicodeEncodeError:
        raise urlguard.URLNotAllowed("outputs_to: the URI must be ASCII (percent-encode other "
                                     "characters)", url=uri, field="outputs_to") from None
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise urlguard.URLNotAllowed(
            f"outputs_to: {uri!r} must not have a query or fragment: each product is uploaded "
            "to outputs_to + its name", url=uri, field="outputs_to")
    if not parts.path.endswith("/"):
        raise urlguard.URLNotAllowed(
            f"outputs_to: {uri!r} must end with '/' (a collection or upload prefix; each "
            "product is uploaded to outputs_to + its name)", url=uri, field="outputs_to")
    return uri


def list_products(job_dir: Path) -> list[tuple[str, int]]:
    """(name, size) of each product to upload, by name (blocking: run it in a thread)."""
    products = []
    try:
        with os.scandir(Path(job_dir) / PRODUCTS_DIR) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                products.append((entry.name, entry.stat(follow_symlinks=False).st_size))
    except FileNotFoundError:
        return []
    return sorted(products)


def media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or DEFAULT_MEDIA_TYPE


class _Unreadable(Exception):
    """The product file cannot be opened; trying again would not help."""


def _open_product(path: Path):
    try:
        # No following a symlink swapped in since the listing; no blocking on a FIFO.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise _Unreadable(f"cannot read {PRODUCTS_DIR}/{path.name}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unreadable(f"cannot read {PRODUCTS_DIR}/{path.name}: not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _ProductBody(FileBodyProducer):
    """A FileBodyProducer that remembers whether it was started (else we close the file)."""

    started = False

    def startProducing(self, consumer):
        self.started = True
        return super().startProducing(consumer)


@attrs.frozen
class _Attempt:
    status: int | None
    error: str | None  # None: uploaded
    retry: bool
    sent: int | None = None


class OutputUploader:
    log = Logger()

    def __init__(self, config: Config, reactor, *, agent: PinnedAgent | None = None,
                 retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS) -> None:
        self._settings = config.fetch
        self._reactor = reactor
        self._delays = tuple(retry_delays)
        if agent is None:
            agent = PinnedAgent(reactor, connect_timeout=self._settings.timeout_seconds)
        self._agent = agent

    async def close(self) -> None:
        """Drop idle persistent connections (at shutdown)."""
        await self._agent.close()

    def _in_thread(self, fn, *args):
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)

    async def _report(self, report: Report, level: str, text: str) -> None:
        try:
            await report(level, text)
        except CancelledError:
            raise
        except Exception:
            self.log.failure("reporting an upload outcome failed ({level}: {text})",
                             level=level, text=text)

    async def upload(self, job_dir: Path, outputs_to: str,
                     report: Report) -> list[UploadOutcome]:
        """Upload every product of the job in C{job_dir} to C{outputs_to}, one by one."""
        job_dir = Path(job_dir)
        try:
            products = await self._in_thread(list_products, job_dir)
        except OSError as e:
            await self._report(report, "error", f"cannot upload the products to {outputs_to}: "
                               f"cannot list {PRODUCTS_DIR}/: {e.strerror}")
            return []
        if not products:
            await self._report(report, "info", f"no products to upload to {outputs_to}")
            return []
        try:
            check_outputs_to(outputs_to, self._settings.allowed_hosts)
        except urlguard.URLNotAllowed as e:
            outcomes = []
            for name, _ in products:
                url = f"{outputs_to}{quote(name, safe='')}" if isinstance(outputs_to, str) else ""
                await self._report(report, "error", f"could not upload {name}: {e.message}")
                outcomes.append(UploadOutcome(name=name, url=url, ok=False, status=None,
                                              attempts=0, error=e.message))
            return outcomes
        outcomes = []
        for name, size in products:
            outcomes.append(await self._upload_one(job_dir / PRODUCTS_DIR / name, size,
                                                   outputs_to + quote(name, safe=""), report))
        return outcomes

    async def _upload_one(self, path: Path, size: int, url: str,
                          report: Report) -> UploadOutcome:
        name = path.name
        tries = len(self._delays) + 1
        attempts = 0
        while True:
            attempts += 1
            result = await self._attempt(path, url)
            if result.error is None:
                sent = result.sent if result.sent is not None else size
                after = f" (attempt {attempts})" if attempts > 1 else ""
                await self._report(report, "info",
                                   f"uploaded {name} ({sent} bytes) to {url}{after}")
                return UploadOutcome(name=name, url=url, ok=True, status=result.status,
                                     attempts=attempts, error=None)
            if result.retry and attempts < tries:
                delay = self._delays[attempts - 1]
                await self._report(report, "warning",
                                   f"uploading {name} to {url} failed (attempt {attempts} of "
                                   f"{tries}): {result.error}; trying again in {delay:g} s")
                await deferLater(self._reactor, delay)
                continue
            if result.retry:
                text = (f"gave up uploading {name} to {url} after {attempts} attempts: "
                        f"{result.error}")
            else:
                text = f"gave up uploading {name} to {url}: {result.error} (not retried)"
            await self._report(report, "error", text)
            return UploadOutcome(name=name, url=url, ok=False, status=result.status,
                                 attempts=attempts, error=result.error)

    async def _attempt(self, path: Path, url: str) -> _Attempt:
        work = Deferred.fromCoroutine(self._put(path, url))
        limit = self._settings.timeout_seconds
        if limit:
            # Cancelling a request fails it with ResponseNeverReceived([CancelledError]),
            # not CancelledError: any failure of an attempt that timed out is the timeout.
            work.addTimeout(limit, self._reactor, onTimeoutCancel=timed_out)
        try:
            code, phrase, sent = await work
        except CancelledError:
            raise
        except urlguard.URLNotAllowed as e:
            # A name that does not resolve (now) may resolve later; a policy refusal will not.
            transient = "cannot be resolved" in e.message
            return _Attempt(None, f"refused: {e.message}" if not transient else e.message,
                            retry=transient)
        except _Unreadable as e:
            return _Attempt(None, str(e), retry=False)
        except (TimeoutError, net_error.TimeoutError):
            return _Attempt(None, f"no answer within {limit:g} s", retry=True)
        except Exception as e:
            return _Attempt(None, describe_failure(e), retry=True)
        if 200 <= code < 300:
            return _Attempt(code, None, retry=False, sent=sent)
        text = f"the server answered {code} {phrase}".rstrip()
        if 300 <= code < 400:
            return _Attempt(code, text + " (redirects are not followed)", retry=False)
        return _Attempt(code, text, retry=code >= 500 or code in (408, 429))

    async def _put(self, path: Path, url: str) -> tuple[int, str, int]:
        """One PUT of the product at C{path}: (status, reason phrase, bytes sent)."""
        settings = self._settings
        checked = await urlguard.check_reachable(self._reactor, url, settings.allowed_hosts,
                                                 settings.allow_private_addresses)
        try:
            url.encode("ascii")
        except UnicodeEncodeError:
            raise urlguard.URLNotAllowed("a URL must be ASCII (percent-encode other "
                                         "characters)", url=url) from None
        body = await self._in_thread(_open_product, path)
        producer = None
        try:
            producer = _ProductBody(body)
            headers = Headers({b"user-agent": [f"KREE/{__version__}".encode()],
                               b"content-type": [media_type(path.name).encode("ascii")]})
            response = await self._agent.request(b"PUT", checked, headers, producer)
            drain = DiscardBody()
            response.deliverBody(drain)
            await drain.done
        finally:
            # Once started, the producer closes the file itself (at the end of the body,
            # or when the request stops it).
            if producer is None or not producer.started:
                body.close()
        phrase = response.phrase.decode("latin-1", "replace") if response.phrase else ""
        return response.code, phrase, producer.length


class JobsForUploads(Protocol):
    """What L{FinishedJobUploads} needs of the job service (kree.jobs.JobService)."""

    async def get(self, job_id: str) -> Any: ...

    async def add_message(self, job_id: str, text: str, *, level: str = "info") -> Any: ...


class FinishedJobUploads:
    """
    Results to storage when a job FINISHES: an observer of the job service
    (C{jobs.add_observer(uploads.observe)}).  A job whose resources name
    C{outputs_to} has every product PUT there (L{OutputUploader.upload}),
    each outcome a job message, and where each went recorded in the job
    directory for the results document.
    """

    log = Logger()

    def __init__(self, jobs: JobsForUploads, uploader: OutputUploader, reactor) -> None:
        self._jobs = jobs
        self._uploader = uploader
        self._reactor = reactor

    def observe(self, event) -> None:
        if event.type == "job.state" and event.data.get("to") == JobState.FINISHED.value:
            Deferred.fromCoroutine(self.upload(event.job_id)).addErrback(
                lambda failure: self.log.failure("uploading the products of job {job_id} "
                                                 "failed", failure=failure,
                                                 job_id=event.job_id))

    async def upload(self, job_id: str) -> None:
        """resources.outputs_to: PUT every product there, each outcome a job message."""
        job = await self._jobs.get(job_id)
        target = job.resources.get("outputs_to")
        if not target:
            return

        async def report(level: str, text: str) -> None:
            await self._jobs.add_message(job_id, text, level=level)

        outcomes = await self._uploader.upload(Path(job.job_dir), target, report)
        await deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                jobdir.record_uploads, Path(job.job_dir),
                                [o.to_json() for o in outcomes])
