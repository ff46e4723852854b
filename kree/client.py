"""
A small synchronous client of the frontend API (DESIGN.md section 3), for
the C{kree} command and for scripts.

Standard library only: C{http.client} over an C{ssl.SSLContext} that trusts
one CA, presents the frontend's client certificate, checks the server's host
name and refuses anything older than TLS 1.2.  One keep-alive connection is
reused for every request and reopened when the server has closed it.

Every failure is a L{KreeClientError}: an HTTP error carries the status and
the C{{"error": {"code", "message", "details"}}} body of the server; a
connection or TLS failure has status 0 and a message that says what to check.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

from kree import __version__

JSON_TYPE = "application/json"
XML_TYPE = "application/xml"
CWL_TYPE = "application/cwl"
DEFAULT_TIMEOUT = 60.0
# Added to a long poll's wait so the socket outlasts the server's answer.
LONG_POLL_MARGIN = 30.0
CHUNK_BYTES = 64 * 1024
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
TERMINAL_STATES = frozenset({"FINISHED", "FAILED", "ABORTED"})

HANDSHAKE_REFUSED = (
    "TLS handshake refused: is your certificate registered and signed by the server's CA?"
)


class KreeClientError(Exception):
    """
    A request that failed.  C{status} is the HTTP status, or 0 when no HTTP
    answer came back (connection refused, TLS handshake failed, ...).
    """

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


def _connection_error(code: str, message: str) -> KreeClientError:
    return KreeClientError(0, code, message)


def tls_context(cert: str | Path, key: str | Path, ca: str | Path) -> ssl.SSLContext:
    """A client context: verify the server against C{ca}, present C{cert}."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        raise _connection_error(
            "bad_ca", f"cannot load the CA certificate {ca}: {_reason(e)}"
        ) from None
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise _connection_error(
            "bad_certificate",
            f"cannot load the client certificate {cert} with key {key}: {_reason(e)} "
            "(both must be PEM files, and the key the certificate's own)",
        ) from None
    return context


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        if error.reason:
            return error.reason.replace("_", " ").lower()
        # Without a reason the text is like "[SSL] PEM lib (_ssl.c:3905)".
        return (error.strerror or str(error)).removeprefix("[SSL] ").split(" (_ssl.c")[0].lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


class KreeClient:
    """
    The API of one kreed as one frontend.

    @param url: C{https://HOST[:PORT][/PREFIX]}
    @param user: sent as C{X-KREE-User} with every request, if given.
    """

    def __init__(self, url: str, cert: str | Path, key: str | Path, ca: str | Path,
                 user: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise _connection_error("bad_url", f"{url!r} is not an https://HOST[:PORT] URL")
        try:
            self.port = parts.port or 443
        except ValueError:
            raise _connection_error("bad_url", f"{url!r} has no valid port") from None
        self.url = url
        self.host = parts.hostname
        self.prefix = parts.path.rstrip("/")
        self.user = user
        self.timeout = timeout
        self._context = tls_context(cert, key, ca)
        self._connection: http.client.HTTPSConnection | None = None

    def __enter__(self) -> "KreeClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- the transport ----------------------------------------------------------

    def _open(self, timeout: float) -> tuple[http.client.HTTPSConnection, bool]:
        """The kept-alive connection (and True), or a new one (and False)."""
        connection = self._connection
        if connection is not None and connection.sock is not None and not _dropped(connection.sock):
            connection.sock.settimeout(timeout)
            return connection, True
        self.close()
        self._connection = http.client.HTTPSConnection(
            self.host, self.port, context=self._context, timeout=timeout
        )
        return self._connection, False

    def _send(self, method: str, path: str, body: bytes | None,
              headers: dict[str, str], timeout: float) -> http.client.HTTPResponse:
        headers = {"Accept": JSON_TYPE, "User-Agent": f"kree/{__version__}", **headers}
        if self.user is not None:
            headers["X-KREE-User"] = self.user
        target = self.prefix + path
        connection, reused = self._open(timeout)
        try:
            try:
                connection.request(method, target, body=body, headers=headers)
                return connection.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server may close an idle kept-alive connection just as
                # we send on it (_open checks, but the race remains).  Only a
                # request that may be repeated is sent again: a POST might
                # have been applied before the connection went.
                if not reused or method not in IDEMPOTENT_METHODS:
                    raise
                self.close()
                connection, reused = self._open(timeout)
                connection.request(method, target, body=body, headers=headers)
                return connection.getresponse()
        except Exception as e:
            self.close()
            raise self._translate(e, reused) from None

    def _translate(self, error: Exception, reused: bool = False) -> KreeClientError:
        where = f"{self.host}:{self.port}"
        if reused and isinstance(error, (http.client.RemoteDisconnected, ConnectionResetError,
                                         BrokenPipeError)):
            return _connection_error(
                "connection_lost",
                f"{where} closed the connection before answering; the request may or may "
                "not have been applied",
            )
        if isinstance(error, ssl.SSLCertVerificationError):
            return _connection_error(
                "tls_server_unverified",
                f"cannot verify the server certificate of {where}: "
                f"{error.verify_message or _reason(error)} "
                "(is --ca / KREE_CA the CA that signed kreed's certificate?)",
            )
        if isinstance(error, ssl.SSLError):
            return _connection_error("tls_refused",
                                     f"{HANDSHAKE_REFUSED} ({_reason(error)}; {where})")
        if isinstance(error, (http.client.RemoteDisconnected, ConnectionResetError,
                              BrokenPipeError)):
            # With TLS 1.3 the server checks the client certificate after the
            # client considers the handshake done: a refusal shows up as the
            # connection being dropped before any answer.
            return _connection_error("tls_refused",
                                     f"{HANDSHAKE_REFUSED} (connection closed by {where})")
        if isinstance(error, ConnectionRefusedError):
            return _connection_error(
                "connection_refused",
                f"cannot connect to {where}: connection refused (is kreed running?)",
            )
        if isinstance(error, socket.gaierror):
            return _connection_error("unknown_host",
                                     f"cannot resolve {self.host}: {error.strerror}")
        if isinstance(error, (TimeoutError, socket.timeout)):
            return _connection_error("timeout", f"no answer from {where} in time")
        if isinstance(error, http.client.HTTPException):
            return _connection_error("bad_response", f"bad HTTP answer from {where}: {error!r}")
        if isinstance(error, OSError):
            return _connection_error("connection_failed",
                                     f"cannot talk to {where}: {_reason(error)}")
        return _connection_error("connection_failed", f"cannot talk to {where}: {error!r}")

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        try:
            return response.read()
        except Exception as e:
            self.close()
            raise self._translate(e) from None

    def _check(self, response: http.client.HTTPResponse) -> None:
        """Raise the server's error for a 4xx/5xx answer (its body consumed)."""
        if response.status < 400:
            return
        data = self._read(response)
        try:
            error = json.loads(data)["error"]
            code, message = str(error["code"]), str(error["message"])
            details = error.get("details") if isinstance(error.get("details"), dict) else {}
        except (ValueError, KeyError, TypeError):
            code = f"http_{response.status}"
            message = f"HTTP {response.status} {response.reason}"
            details = {}
        raise KreeClientError(response.status, code, message, details)

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                json_body: Any = None, body: bytes | None = None,
                content_type: str | None = None, timeout: float | None = None) -> Any:
        """One request; the decoded JSON answer, or None for an empty one (204)."""
        headers = {}
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            content_type = JSON_TYPE
        if content_type is not None:
            headers["Content-Type"] = content_type
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        response = self._send(method, path, body, headers, timeout or self.timeout)
        self._check(response)
        data = self._read(response)
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise _connection_error(
                "bad_response", f"{method} {path} answered {response.status} with no JSON body"
            ) from None

    # -- endpoints ---------------------------------------------------------------

    def service_info(self) -> dict[str, Any]:
        return self.request("GET", "/v1/service-info")

    def upload_workflow(self, document: bytes,
                        content_type: str | None = None) -> dict[str, Any]:
        """
        POST /v1/workflows: C{{uri, sha256, size}}.  Without C{content_type},
        XML (MoML) is sent as such and anything else as CWL.
        """
        if content_type is None:
            content_type = XML_TYPE if document.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(
                b"<") else CWL_TYPE
        return self.request("POST", "/v1/workflows", body=document, content_type=content_type)

    def submit(self, workflow: str, *, parameters: dict[str, Any] | None = None,
               inputs: dict[str, str] | None = None, resources: dict[str, Any] | None = None,
               queue: bool = False) -> dict[str, Any]:
        """POST /v1/jobs: the new job's record."""
        body: dict[str, Any] = {"workflow": workflow, "queue": queue}
        if parameters:
            body["parameters"] = parameters
        if inputs:
            body["inputs"] = inputs
        if resources:
            body["resources"] = resources
        return self.request("POST", "/v1/jobs", json_body=body)

    def list_jobs(self, *, state: str | None = None, user: str | None = None,
                  created_after: str | None = None, limit: int | None = None,
                  after: str | None = None) -> dict[str, Any]:
        """One page of GET /v1/jobs: C{{jobs, next}}."""
        return self.request("GET", "/v1/jobs", query={
            "state": state, "user": user, "created_after": created_after,
            "limit": limit, "after": after,
        })

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", _job_path(job_id))

    def state(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", _job_path(job_id, "state"))

    def delete(self, job_id: str) -> None:
        self.request("DELETE", _job_path(job_id))

    def action(self, job_id: str, action: str, reason: str | None = None) -> dict[str, Any]:
        """POST /v1/jobs/{id}/{queue|pause|resume|stop|kill}: the new state record."""
        body = {"reason": reason} if reason else None
        return self.request("POST", _job_path(job_id, action), json_body=body)

    def queue(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.action(job_id, "queue", reason)

    def pause(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.action(job_id, "pause", reason)

    def resume(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.action(job_id, "resume", reason)

    def stop(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.action(job_id, "stop", reason)

    def kill(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.action(job_id, "kill", reason)

    def prompt(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", _job_path(job_id, "input"))

    def answer(self, job_id: str, answers: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", _job_path(job_id, "input"), json_body={"answers": answers})

    def messages(self, job_id: str, after: int = 0) -> dict[str, Any]:
        return self.request("GET", _job_path(job_id, "messages"), query={"after": after})

    def events(self, job_id: str, after: int = 0, wait: int = 0,
               limit: int | None = None) -> dict[str, Any]:
        """
        GET /v1/jobs/{id}/events: C{{id, events, next}}.  With C{wait}, a
        long poll: the server answers as soon as an event after C{after}
        exists, or with no events after C{wait} seconds.
        """
        query = {"after": after, "limit": limit}
        if wait:
            query["wait"] = wait
        return self.request("GET", _job_path(job_id, "events"), query=query,
                            timeout=max(self.timeout, wait + LONG_POLL_MARGIN))

    def results(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", _job_path(job_id, "results"))

    def products(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", _job_path(job_id, "products"))

    def fetch_product(self, job_id: str, name: str, out: BinaryIO) -> tuple[int, str]:
        """
        Stream a product into C{out} in chunks; the number of bytes and the
        media type.  A body shorter than its Content-Length is an error.
        """
        path = _job_path(job_id, "products", name)
        response = self._send("GET", path, None, {"Accept": "*/*"}, self.timeout)
        self._check(response)
        media_type = response.getheader("content-type", "application/octet-stream")
        size = 0
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except http.client.IncompleteRead as e:
                self.close()
                received = size + len(e.partial)
                raise _connection_error(
                    "incomplete_download",
                    f"{name}: the connection ended after {received} of "
                    f"{received + (e.expected or 0)} bytes",
                ) from None
            except Exception as e:
                self.close()
                raise self._translate(e) from None
            if not chunk:
                break
            try:
                out.write(chunk)
            except BaseException:
                # Not the server's fault (disk full, closed pipe): the caller's
                # error, and the rest of this answer is abandoned.
                self.close()
                raise
            size += len(chunk)
        return size, media_type


def _job_path(job_id: str, *parts: str) -> str:
    return "/".join(["/v1/jobs", *(quote(p, safe="") for p in (job_id, *parts))])


def _dropped(sock: socket.socket) -> bool:
    """
    True if the server closed the kept-alive connection: an idle connection
    is readable only when it has been closed (or sent something unasked).
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
