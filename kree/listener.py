"""
A callback listener for KREE's job events, for frontend developers and tests.

KREE delivers each job event as an HTTP POST whose body is the event's JSON
(C{{"id", "job", "seq", "type", "time", "data"}}) and whose KREE-Event-Id,
KREE-Timestamp and KREE-Signature headers L{kree.signing} checks.  Delivery
is at least once, so a L{Listener} records each event id once.  It answers
valid deliveries with C{status} (204 by default: acknowledged; 410 ends the
subscription; anything else makes KREE retry later), optionally after
C{delay} seconds, and refuses the others: 401 for a bad or stale signature,
400 for a body that is not a JSON object, 413 for one over 1 MiB, 405 for
any method but POST.  Standard library only.

    from kree.listener import Listener

    with Listener("the subscription's secret") as listener:
        subscribe(callback_url=listener.url)          # however your frontend does it
        run_a_job()
        listener.wait_for(lambda events: any(e["type"] == "job.state"
                                             and e["data"]["to"] == "FINISHED"
                                             for e in events), timeout=60)
        listener.status = 500                         # now simulate a failing listener
        listener.delay = 5                            # ... or a slow one
    print(len(listener.events), listener.duplicates, listener.rejected)

C{kree listen --port P --secret S} runs one in the foreground and prints each
event as a line of JSON.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from kree import signing

MAX_BODY = 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    listener: Listener


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a length
    server_version = "KREE-Listener"
    sys_version = ""

    def do_POST(self) -> None:
        self.server.listener._handle(self)

    def _not_allowed(self) -> None:
        self.close_connection = True  # any body is left unread
        self.server.listener._answer(self, 405, "only POST is allowed", {"Allow": "POST"})

    do_GET = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.listener.log_requests:
            super().log_message(format, *args)


class Listener:
    """
    An HTTP server receiving KREE's callback deliveries, in background threads.

    @ivar events: the verified events, in arrival order, each id once.  An
        event is recorded whatever C{status} answers it (so a retried one,
        after a simulated failure, counts as a duplicate), unless C{on_event}
        raised for it: that delivery is answered 500 and not recorded.
    @ivar duplicates: verified deliveries of an id already recorded.
    @ivar rejected: requests refused for their signature (401) or body (400,
        411, 413).
    @ivar status: the status answered to valid deliveries; settable any time.
    @ivar delay: seconds to wait before handling a valid delivery; settable.
    @ivar log_requests: write an access log line to stderr per request.
    """

    def __init__(self, secret: str, *, host: str = "127.0.0.1", port: int = 0,
                 on_event: Callable[[dict], None] | None = None, answer_status: int = 204,
                 on_reject: Callable[[int, str], None] | None = None) -> None:
        """
        @param port: 0 for any free port, known as C{port} and C{url} once started.
        @param on_event: called with each new verified event, one at a time,
            in the request's thread, before it is recorded and answered.
        @param on_reject: called with the status and the reason of each
            rejected request.
        """
        self.secret = secret
        self.host = host
        self.port = port
        self.on_event = on_event
        self.on_reject = on_reject
        self.status = answer_status
        self.delay = 0.0
        self.log_requests = False
        self.events: list[dict] = []
        self.duplicates = 0
        self.rejected = 0
        self._seen: set[str] = set()
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --

    def start(self) -> Listener:
        if self._server is not None:
            raise RuntimeError("this listener is already started")
        server_class = _Server6 if ":" in self.host else _Server
        server = server_class((self.host, self.port), _Handler)
        server.listener = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"kree-listener-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the listener is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # -- waiting --

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float = 30) -> list[dict]:
        """
        Poll until C{predicate(events)} is true; return the events it saw.

        @raise TimeoutError: not within C{timeout} seconds; the message lists
            what arrived.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                events = list(self.events)
            if predicate(events):
                return events
            if time.monotonic() >= deadline:
                arrived = "\n".join(json.dumps(e, ensure_ascii=False) for e in events)
                raise TimeoutError(
                    f"no match within {timeout} s; {len(events)} event(s) arrived "
                    f"({self.duplicates} duplicate(s), {self.rejected} rejected)"
                    + (":\n" + arrived if events else "")
                )
            time.sleep(0.02)

    # -- requests --

    def _handle(self, request: _Handler) -> None:
        length_header = request.headers.get("Content-Length")
        if length_header is None:
            return self._reject(request, 411, "a Content-Length is required")
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            return self._reject(request, 400, "the Content-Length is not a number")
        if length > MAX_BODY:
            request.close_connection = True  # the body is left unread
            return self._reject(request, 413, f"the body is over {MAX_BODY} bytes")
        body = request.rfile.read(length)
        event_id = request.headers.get("KREE-Event-Id")
        try:
            signing.verify(self.secret, event_id, request.headers.get("KREE-Timestamp"),
                           request.headers.get("KREE-Signature"), body)
        except signing.InvalidSignature as e:
            return self._reject(request, 401, str(e))
        try:
            event = json.loads(body)
        except ValueError:
            return self._reject(request, 400, "the body is not JSON")
        if not isinstance(event, dict):
            return self._reject(request, 400, "the body is not a JSON object")

        if self.delay > 0:
            time.sleep(self.delay)
        with self._lock:
            if event_id in self._seen:
                self.duplicates += 1
            else:
                if self.on_event is not None:
                    try:
                        self.on_event(event)
                    except Exception:
                        traceback.print_exc(file=sys.stderr)
                        return self._answer(request, 500, "the listener's on_event failed")
                self._seen.add(event_id)
                self.events.append(event)
        self._answer(request, self.status)

    def _reject(self, request: _Handler, status: int, reason: str) -> None:
        with self._lock:
            self.rejected += 1
        if self.on_reject is not None:
            try:
                self.on_reject(status, reason)
            except Exception:
                traceback.print_exc(file=sys.stderr)
        self._answer(request, status, reason)

    def _answer(self, request: _Handler, status: int, message: str | None = None,
                headers: dict[str, str] | None = None) -> None:
        body = b""
        if message is not None and status >= 400:
            body = json.dumps({"error": message}).encode() + b"\n"
        try:
            request.send_response(status)
            for name, value in (headers or {}).items():
                request.send_header(name, value)
            if request.close_connection:
                request.send_header("Connection", "close")
            if status != 204 and status >= 200:
                if body:
                    request.send_header("Content-Type", "application/json")
                request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            if body and request.command != "HEAD":
                request.wfile.write(body)
        except OSError:
            request.close_connection = True  # the sender went away
