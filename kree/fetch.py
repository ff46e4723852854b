"""
Fetching workflows and inputs by URI, through the cache (DESIGN.md sections 6-7).

L{Fetcher.fetch} turns a URI into a body on disk, C{<state-dir>/cache/<sha256>}
(written atomically by L{store_document}, also for uploads), and answers a
L{FetchResult}.  The store's cache index (L{kree.store.cache.CacheStore})
remembers, per URI, the SHA-256, size and validators (ETag, Last-Modified) of
the body last seen, and when it was fetched and last checked.

Schemes:

 - C{https:} and C{http:} go through Twisted's HTTP client: a
   L{kree.httpclient.PinnedAgent}, which connects only to the addresses the
   guard checked (no second resolution, so no DNS rebinding), with a
   persistent connection pool; https servers are verified with
   L{kree.httpclient.ServerTLSPolicy} (service_identity against the system's
   trust store).  Before each request, the first and every redirect hop,
   L{kree.urlguard.check_reachable} checks the scheme, the admin's host
   allow-list ([fetch] allowed_hosts) and every address the host resolves to
   (no loopback, private, link-local ... unless [fetch]
   allow_private_addresses).  The Agent never follows redirects itself:
   301, 302, 303, 307 and 308 are followed here, at most L{MAX_REDIRECTS}
   of them, each hop guarded; a redirect from https to http is refused.
 - C{file:} reads a local file, only one under a root of [fetch] file_roots
   once symlinks and C{..} are resolved.  The file's mtime plays
   Last-Modified: with the same mtime and size as recorded the cached body
   is reused, otherwise the file is read again.
 - C{kree:workflow/<sha256>} names an uploaded document (POST
   /v1/workflows); it must be in the cache index and on disk.

Anything else is refused with C{uri_not_allowed}.

Caching and revalidation: a cached http(s) URI is fetched again with
C{If-None-Match} (its ETag) and C{If-Modified-Since} (its Last-Modified); a
304 reuses the body (C{record_revalidated}), a 200 stores the new version
(C{record_fetch}).  With C{freshness_seconds} > 0, an entry checked less
than that long ago is reused without any request; the default, 0, always
revalidates.  A cached body missing from disk makes the fetch unconditional.

Limits: [fetch] max_bytes bounds a body (a Content-Length over it fails
before reading; without one, reading stops as soon as the body exceeds it:
C{too_large}); [fetch] timeout_seconds bounds the whole fetch, redirects,
cache and disk work included (C{timeout}; 0 means no limit).  Any other
non-2xx answer, a broken connection, a missing file or a missing upload is
C{fetch_failed}.  Every failure is a L{FetchError} (HTTP 422) whose message
names the URI.  A L{kree.urlguard.URLNotAllowed} becomes a FetchError with
the same code, C{uri_not_allowed}, so callers catch one class.

Concurrent fetches of one URI share one request: the first starts it, the
others wait on it, and all get the same result or the same error.

Blocking file work (stat, hashing, reading file: URIs, writing the cache)
runs in the reactor's thread pool, never on the reactor thread.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import attrs
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from kree import __version__, urlguard
from kree.config import Config
from kree.errors import KreeError
from kree.httpclient import PinnedAgent, describe_failure
from kree.store import Store

MAX_REDIRECTS = 5
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
WORKFLOW_PREFIX = "kree:workflow/"
# Bodies of redirects, 304s and errors are read (so the connection can be
# reused) up to this much, then the connection is dropped.
_DISCARD_LIMIT = 65536
_HEX = frozenset("0123456789abcdef")


def store_document(cache_dir: Path, sha256: str, data: bytes) -> Path:
    """
    Put a body in the cache as C{cache_dir/sha256}, atomically (a temp file,
    fsync, then rename); a body already there is kept.  Fetches and uploads
    (POST /v1/workflows) both store through it.
    """
    path = cache_dir / sha256
    if path.exists():
        return path
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


class FetchError(KreeError):
    """A URI could not be fetched; C{code} says why."""

    status = 422
    CODES = ("uri_not_allowed", "fetch_failed", "too_large", "timeout")

    def __init__(self, code: str, message: str, **details) -> None:
        assert code in self.CODES, code
        super().__init__(message, **details)
        self.code = code


@attrs.frozen
class FetchResult:
    uri: str
    sha256: str
    size: int
    path: Path
    # False when the cached body was reused (304, still fresh, file unchanged,
    # an uploaded document).
    fetched: bool
    etag: str | None = None
    last_modified: str | None = None


class _TooLarge(Exception):
    pass


class _BodyReader(protocol.Protocol):
    """Collects a response body up to C{limit} bytes (or drops it: C{keep=False})."""

    def __init__(self, limit: int, keep: bool = True) -> None:
        self.limit = limit
        self.keep = keep
        self.chunks: list[bytes] = []
        self.received = 0
        self.done = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.received += len(data)
        if self.received > self.limit:
            self.chunks = []
            if self.keep:
                self.done.errback(Failure(_TooLarge()))
            else:
                self.done.callback(b"")
            self.transport.stopProducing()
            return
        if self.keep:
            self.chunks.append(data)

    def connectionLost(self, reason) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)

    def _cancel(self, d: Deferred) -> None:
        d.errback(Failure(CancelledError()))
        if self.transport is not None:
            self.transport.stopProducing()


class _Abort(protocol.Protocol):
    """Takes a response body only to drop the connection at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _header(response, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _hash_and_store(cache_dir: Path, data: bytes) -> tuple[str, Path]:
    sha256 = hashlib.sha256(data).hexdigest()
    return sha256, store_document(cache_dir, sha256, data)


def _mtime_text(st: os.stat_result) -> str:
    """A file's mtime as recorded in the cache index (ISO 8601, UTC, microseconds)."""
    return datetime.datetime.fromtimestamp(st.st_mtime_ns / 1e9, datetime.timezone.utc).isoformat()


class Fetcher:
    def __init__(self, config: Config, store: Store, reactor, *, agent: PinnedAgent | None = None,
                 freshness_seconds: float = 0) -> None:
        self._settings = config.fetch
        self._cache_dir = Path(config.cache_dir)
        self._store = store
        self._reactor = reactor
        self._freshness = freshness_seconds
        if agent is None:
            agent = PinnedAgent(reactor, connect_timeout=self._settings.timeout_seconds)
        self._agent = agent
        self._in_flight: dict[str, list[Deferred]] = {}

    def cache_path(self, sha256: str) -> Path:
        """Where the cached body with this hash lives."""
        return self._cache_dir / sha256

    async def keep_upload(self, data: bytes,
                          check: Callable[[bytes], None]) -> tuple[str, str]:
        """
        An uploaded document, checked by C{check} (which raises), stored by
        its hash and indexed as C{kree:workflow/<sha256>}: (that URI, sha256).
        Checking and hashing a large document is CPU work: off the reactor.
        """
        def check_and_store() -> str:
            check(data)
            return _hash_and_store(self._cache_dir, data)[0]

        sha256 = await deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                         check_and_store)
        uri = f"kree:workflow/{sha256}"
        if await self._store.cache.get(uri) is None:
            await self._store.cache.record_fetch(uri, sha256=sha256, size=len(data))
        return uri, sha256

    async def close(self) -> None:
        """Drop idle persistent connections (at shutdown)."""
        await self._agent.close()

    # -- sharing ------------------------------------------------------------

    async def fetch(self, uri: str) -> FetchResult:
        """The body of C{uri}, from its origin or the cache; raises L{FetchError}."""
        waiter: Deferred = Deferred()
        waiters = self._in_flight.get(uri)
        if waiters is not None:
            waiters.append(waiter)
        else:
            self._in_flight[uri] = [waiter]
            Deferred.fromCoroutine(self._fetch_with_timeout(uri)).addBoth(self._settle, uri)
        return await waiter

    def _settle(self, result, uri: str) -> None:
        for waiter in self._in_flight.pop(uri, []):
            if waiter.called:  # that caller cancelled its wait
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _fetch_with_timeout(self, uri: str) -> FetchResult:
        work = Deferred.fromCoroutine(self._fetch(uri))
        limit = self._settings.timeout_seconds
        if not limit:
            return await work
        expired = []

        def expire() -> None:
            expired.append(True)
            work.cancel()

        timer = self._reactor.callLater(limit, expire)
        try:
            return await work
        except Exception:
            if expired:
                raise FetchError("timeout", f"fetching {uri} took longer than {limit:g} s",
                                 uri=uri, timeout_seconds=limit) from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _fetch(self, uri: str) -> FetchResult:
        if not isinstance(uri, str) or not uri:
            raise FetchError("uri_not_allowed", "a URI is required", uri=uri)
        scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
        if scheme in ("http", "https"):
            return await self._fetch_http(uri)
        if scheme == "file":
            return await self._fetch_file(uri)
        if uri.startswith(WORKFLOW_PREFIX):
            return await self._fetch_upload(uri)
        raise FetchError("uri_not_allowed",
                         f"cannot fetch {uri}: scheme {scheme or '(none)'!r} is not allowed "
                         f"(allowed: https, http, file, kree:workflow/)", uri=uri)

    def _in_thread(self, fn, *args):
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)

    def _result(self, uri: str, entry, fetched: bool) -> FetchResult:
        return FetchResult(uri=uri, sha256=entry.sha256, size=entry.size,
                           path=self._cache_dir / entry.sha256, fetched=fetched,
                           etag=entry.etag, last_modified=entry.last_modified)

    # -- kree:workflow/ -----------------------------------------------------

    async def _fetch_upload(self, uri: str) -> FetchResult:
        sha256 = uri[len(WORKFLOW_PREFIX):]
        if len(sha256) != 64 or not set(sha256) <= _HEX:
            raise FetchError("uri_not_allowed", f"cannot fetch {uri}: an uploaded workflow is "
                             "named kree:workflow/<sha256, 64 lowercase hex digits>", uri=uri)
        entry = await self._store.cache.get(uri)
        present = entry is not None and await self._in_thread(
            (self._cache_dir / entry.sha256).is_file)
        if not present:
            raise FetchError("fetch_failed", f"cannot fetch {uri}: no such uploaded workflow "
                             "(upload it with POST /v1/workflows)", uri=uri)
        return self._result(uri, entry, fetched=False)

    # -- file: ----------------------------------------------------------------

    async def _fetch_file(self, uri: str) -> FetchResult:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise FetchError("uri_not_allowed", f"cannot fetch {uri}: file: URIs must name a "
                             f"local file (host {parts.netloc!r} given)", uri=uri)
        path = unquote(parts.path)
        if not path.startswith("/") or "\0" in path:
            raise FetchError("uri_not_allowed", f"cannot fetch {uri}: not an absolute path",
                             uri=uri)
        entry = await self._store.cache.get(uri)
        known = (entry.sha256, entry.size, entry.last_modified) if entry is not None else None
        outcome = await self._in_thread(self._read_file_thd, uri, path, known)
        if outcome is None:
            entry = await self._store.cache.record_revalidated(uri)
            return self._result(uri, entry, fetched=False)
        sha256, size, mtime = outcome
        entry = await self._store.cache.record_fetch(uri, sha256=sha256, size=size,
                                                     last_modified=mtime)
        return self._result(uri, entry, fetched=True)

    def _read_file_thd(self, uri: str, path: str, known) -> tuple[str, int, str] | None:
        """None if the cached body is still current, else (sha256, size, mtime) of a new one."""
        roots = [Path(root).resolve() for root in self._settings.file_roots]
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(root) for root in roots):
            raise FetchError("uri_not_allowed",
                             f"cannot fetch {uri}: {real} is not under an allowed file root "
                             "([fetch] file_roots)" if roots else
                             f"cannot fetch {uri}: no file roots are configured "
                             "([fetch] file_roots)", uri=uri)
        try:
            # No following a symlink swapped in since; no blocking on a FIFO.
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise FetchError("fetch_failed", f"cannot fetch {uri}: no such file", uri=uri) from None
        except OSError as e:
            raise FetchError("fetch_failed", f"cannot fetch {uri}: {e.strerror}", uri=uri) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise FetchError("fetch_failed", f"cannot fetch {uri}: not a regular file", uri=uri)
        with os.fdopen(fd, "rb") as f:
            limit = self._settings.max_bytes
            if st.st_size > limit:
                raise FetchError("too_large", f"cannot fetch {uri}: the file has {st.st_size} "
                                 f"bytes, more than the limit of {limit} ([fetch] max_bytes)",
                                 uri=uri, size=st.st_size, max_bytes=limit)
            mtime = _mtime_text(st)
            if (known is not None and known[1:] == (st.st_size, mtime)
                    and (self._cache_dir / known[0]).is_file()):
                return None
            data = f.read(limit + 1)
        if len(data) > limit:
            raise FetchError("too_large", f"cannot fetch {uri}: the file grew past the limit "
                             f"of {limit} bytes ([fetch] max_bytes)", uri=uri, max_bytes=limit)
        sha256, _ = _hash_and_store(self._cache_dir, data)
        return sha256, len(data), mtime

    # -- http(s): -------------------------------------------------------------

    async def _cached(self, uri: str):
        """The cache entry of C{uri} if its body is still on disk."""
        entry = await self._store.cache.get(uri)
        if entry is None:
            return None
        if not await self._in_thread((self._cache_dir / entry.sha256).is_file):
            return None
        return entry

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._reactor.seconds(), datetime.timezone.utc)

    async def _guard(self, uri: str, url: str, came_from: str | None) -> urlguard.CheckedURL:
        settings = self._settings
        try:
            checked = await urlguard.check_reachable(self._reactor, url, settings.allowed_hosts,
                                                     settings.allow_private_addresses)
            url.encode("ascii")
        except urlguard.URLNotAllowed as e:
            what = f"the redirect from {came_from} to {url}" if came_from else url
            raise FetchError("uri_not_allowed", f"refused to fetch {what}: {e.message}",
                             **{**e.details, "uri": uri, "url": url}) from None
        except UnicodeEncodeError:
            raise FetchError("uri_not_allowed", f"refused to fetch {url}: a URL must be ASCII "
                             "(percent-encode other characters)", uri=uri, url=url) from None
        if came_from and came_from.lower().startswith("https:") and not url.lower().startswith(
                "https:"):
            raise FetchError("uri_not_allowed", f"refused the redirect from {came_from} to "
                             f"{url}: it leaves https", uri=uri, url=url)
        return checked

    async def _fetch_http(self, uri: str) -> FetchResult:
        settings = self._settings
        entry = await self._cached(uri)
        if entry is not None and self._freshness > 0:
            try:
                urlguard.check_url(uri, settings.allowed_hosts)
            except urlguard.URLNotAllowed as e:
                raise FetchError("uri_not_allowed", f"refused to fetch {uri}: {e.message}",
                                 **{**e.details, "uri": uri}) from None
            age = (self._now() - entry.checked_at).total_seconds()
            if 0 <= age < self._freshness:
                return self._result(uri, entry, fetched=False)

        headers = Headers({b"user-agent": [f"KREE/{__version__}".encode()],
                           b"accept": [b"*/*"]})
        if entry is not None:
            if entry.etag:
                headers.setRawHeaders(b"if-none-match", [entry.etag.encode("latin-1")])
            if entry.last_modified:
                headers.setRawHeaders(b"if-modified-since",
                                      [entry.last_modified.encode("latin-1")])

        parts = urlsplit(urldefrag(uri)[0])
        url, came_from = parts._replace(scheme=parts.scheme.lower()).geturl(), None
        for hop in range(MAX_REDIRECTS + 1):
            checked = await self._guard(uri, url, came_from)
            response = await self._request(uri, checked, headers)
            if response.code not in REDIRECT_CODES:
                break
            location = _header(response, b"location")
            await self._discard(response)
            if not location:
                raise FetchError("fetch_failed", f"fetching {uri} failed: {url} answered "
                                 f"{response.code} without a Location", uri=uri,
                                 status=response.code)
            if hop == MAX_REDIRECTS:
                raise FetchError("fetch_failed", f"fetching {uri} failed: more than "
                                 f"{MAX_REDIRECTS} redirects (the last to {location})",
                                 uri=uri, status=response.code)
            url, came_from = urldefrag(urljoin(url, location))[0], url

        if response.code == 304:
            await self._discard(response)
            if entry is None:
                raise FetchError("fetch_failed", f"fetching {uri} failed: {url} answered 304 "
                                 "to a request that was not conditional", uri=uri, status=304)
            entry = await self._store.cache.record_revalidated(uri)
            return self._result(uri, entry, fetched=False)
        if not 200 <= response.code < 300:
            await self._discard(response)
            phrase = response.phrase.decode("latin-1", "replace") if response.phrase else ""
            where = "" if url == uri else f" ({url})"
            raise FetchError("fetch_failed", f"fetching {uri} failed: the server{where} "
                             f"answered {response.code} {phrase}".rstrip(), uri=uri,
                             url=url, status=response.code)

        limit = settings.max_bytes
        if response.length is not UNKNOWN_LENGTH and response.length > limit:
            response.deliverBody(_Abort())
            raise FetchError("too_large", f"fetching {uri} failed: the body has "
                             f"{response.length} bytes (Content-Length), more than the limit "
                             f"of {limit} ([fetch] max_bytes)", uri=uri,
                             size=response.length, max_bytes=limit)
        reader = _BodyReader(limit)
        response.deliverBody(reader)
        try:
            data = await reader.done
        except _TooLarge:
            raise FetchError("too_large", f"fetching {uri} failed: the body exceeds the limit "
                             f"of {limit} bytes ([fetch] max_bytes)", uri=uri,
                             max_bytes=limit) from None
        except CancelledError:
            raise
        except Exception as e:
            raise FetchError("fetch_failed", f"fetching {uri} failed while reading the body: "
                             f"{describe_failure(e)}", uri=uri) from None

        sha256, _ = await self._in_thread(_hash_and_store, self._cache_dir, data)
        entry = await self._store.cache.record_fetch(
            uri, sha256=sha256, size=len(data), etag=_header(response, b"etag"),
            last_modified=_header(response, b"last-modified"))
        return self._result(uri, entry, fetched=True)

    async def _request(self, uri: str, checked: urlguard.CheckedURL, headers: Headers):
        url = checked.url
        try:
            return await self._agent.request(b"GET", checked, headers)
        except CancelledError:
            raise
        except Exception as e:
            where = "" if url == uri else f" (at {url})"
            raise FetchError("fetch_failed", f"fetching {uri} failed{where}: {describe_failure(e)}",
                             uri=uri, url=url) from None

    async def _discard(self, response) -> None:
        """Read and drop a body we do not want (so the connection can be reused)."""
        reader = _BodyReader(_DISCARD_LIMIT, keep=False)
        response.deliverBody(reader)
        try:
            await reader.done
        except CancelledError:
            raise
        except Exception:
            pass
