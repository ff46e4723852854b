"""
L{kree.listener} and C{kree listen}, with signed deliveries POSTed by
http.client as KREE would send them; and L{kree.signing} itself.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kree import signing
from kree.listener import MAX_BODY, Listener

SECRET = "s3cret"


def event(event_id: int = 1, type: str = "job.state", **data) -> dict:
    return {"id": event_id, "job": "j-1", "seq": event_id, "type": type,
            "time": "2024-01-01T00:00:00Z", "data": data or {"from": "NEW", "to": "QUEUED"}}


def post(port: int, body: bytes, headers: dict[str, str] | None = None, *,
         method: str = "POST", timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, "/", body=body, headers={"Content-Type": "application/json",
                                                      **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def deliver(port: int, document: dict, *, secret: str = SECRET, now: float | None = None,
            **kwargs) -> tuple[int, bytes]:
    body = json.dumps(document).encode()
    return post(port, body, signing.headers(secret, document["id"], body, now=now), **kwargs)


@pytest.fixture
def listener():
    with Listener(SECRET) as started:
        yield started


# -- the listener ---------------------------------------------------------------------


def test_valid_event_is_recorded(listener):
    seen = []
    listener.on_event = seen.append
    assert listener.url == f"http://127.0.0.1:{listener.port}/"
    status, _ = deliver(listener.port, event(7))
    assert status == 204
    assert listener.events == [event(7)] == seen
    assert (listener.duplicates, listener.rejected) == (0, 0)
    assert listener.wait_for(lambda events: len(events) == 1, timeout=1) == [event(7)]


def test_tampered_body_is_refused(listener):
    body = json.dumps(event(1)).encode()
    headers = signing.headers(SECRET, 1, body)
    status, answer = post(listener.port, body.replace(b"QUEUED", b"FAILED"), headers)
    assert status == 401
    assert "does not match" in json.loads(answer)["error"]
    assert listener.events == [] and listener.rejected == 1


def test_wrong_secret_is_refused(listener):
    assert deliver(listener.port, event(1), secret="other")[0] == 401
    assert listener.events == [] and listener.rejected == 1


def test_stale_timestamp_is_refused(listener):
    assert deliver(listener.port, event(1), now=time.time() - 1000)[0] == 401
    assert listener.events == [] and listener.rejected == 1


def test_missing_headers_are_refused(listener):
    assert post(listener.port, json.dumps(event(1)).encode())[0] == 401
    assert listener.rejected == 1


def test_duplicate_is_recorded_once(listener):
    assert deliver(listener.port, event(1))[0] == 204
    assert deliver(listener.port, event(1))[0] == 204  # acknowledged again
    assert deliver(listener.port, event(2))[0] == 204
    assert [e["id"] for e in listener.events] == [1, 2]
    assert listener.duplicates == 1


def test_status_is_settable(listener):
    listener.status = 410
    assert deliver(listener.port, event(1))[0] == 410
    listener.status = 500
    assert deliver(listener.port, event(2))[0] == 500
    listener.status = 200
    assert deliver(listener.port, event(2))[0] == 200
    assert [e["id"] for e in listener.events] == [1, 2] and listener.duplicates == 1


def test_answer_status_is_the_default():
    with Listener(SECRET, answer_status=200) as started:
        assert deliver(started.port, event(1))[0] == 200


def test_delay(listener):
    listener.delay = 0.3
    started = time.monotonic()
    assert deliver(listener.port, event(1))[0] == 204
    assert time.monotonic() - started >= 0.3


def test_non_json_body_is_400(listener):
    body = b"not json"
    assert post(listener.port, body, signing.headers(SECRET, 1, body))[0] == 400
    body = b"[1, 2]"
    assert post(listener.port, body, signing.headers(SECRET, 2, body))[0] == 400
    assert listener.events == [] and listener.rejected == 2


def test_only_post(listener):
    status, _ = post(listener.port, b"", method="GET")
    assert status == 405
    assert listener.rejected == 0


def test_body_over_1_mib_is_413(listener):
    # Refused on its Content-Length, before any of it is read: send only that.
    body = b"x" * (MAX_BODY + 1)
    conn = http.client.HTTPConnection("127.0.0.1", listener.port, timeout=5)
    try:
        conn.putrequest("POST", "/")
        for name, value in {**signing.headers(SECRET, 1, body),
                            "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert response.getheader("Connection") == "close"
    finally:
        conn.close()
    assert listener.events == [] and listener.rejected == 1


def test_failing_on_event_answers_500_and_records_nothing(listener, capsys):
    def fail(_event):
        raise RuntimeError("boom")

    listener.on_event = fail
    assert deliver(listener.port, event(1))[0] == 500
    assert listener.events == []
    assert "boom" in capsys.readouterr().err
    listener.on_event = None
    assert deliver(listener.port, event(1))[0] == 204  # the retry is not a duplicate
    assert len(listener.events) == 1 and listener.duplicates == 0


def test_wait_for(listener):
    threading.Timer(0.1, deliver, args=(listener.port, event(3))).start()
    assert listener.wait_for(lambda events: any(e["id"] == 3 for e in events), timeout=5)
    with pytest.raises(TimeoutError, match="1 event"):
        listener.wait_for(lambda events: len(events) > 1, timeout=0.1)


def test_on_reject_and_stop():
    rejections = []
    started = Listener(SECRET, on_reject=lambda status, reason: rejections.append(status))
    with pytest.raises(RuntimeError):
        started.url
    started.start()
    port = started.port
    deliver(port, event(1), secret="other")
    started.stop()
    started.stop()  # twice is fine
    assert rejections == [401]
    with pytest.raises(OSError):
        deliver(port, event(2), timeout=1)


# -- signing --------------------------------------------------------------------------


def test_signing_round_trip():
    body = b'{"id": 5}'
    headers = signing.headers(SECRET, 5, body)
    assert headers["KREE-Event-Id"] == "5"
    assert headers["KREE-Signature"].startswith("v1=")
    signing.verify(SECRET, headers["KREE-Event-Id"], headers["KREE-Timestamp"],
                   headers["KREE-Signature"], body)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(SECRET, "6", headers["KREE-Timestamp"], headers["KREE-Signature"], body)


def test_signing_several_signatures():
    body = b"{}"
    headers = signing.headers(SECRET, 1, body)
    good = headers["KREE-Signature"]
    args = (SECRET, "1", headers["KREE-Timestamp"])
    signing.verify(*args, f"v1=bad {good}", body)
    signing.verify(*args, f"v0=zzz {good} v2=other", body)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(*args, "v1=bad v1=worse", body)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(*args, good.replace("v1=", "v2="), body)


def test_signing_timestamps():
    body = b"{}"
    headers = signing.headers(SECRET, 1, body, now=1000)
    args = (SECRET, "1", headers["KREE-Timestamp"], headers["KREE-Signature"], body)
    signing.verify(*args, now=1000 + signing.TOLERANCE_SECONDS)
    with pytest.raises(signing.InvalidSignature, match="away from now"):
        signing.verify(*args, now=1000 + signing.TOLERANCE_SECONDS + 1)
    with pytest.raises(signing.InvalidSignature, match="not a number"):
        signing.verify(SECRET, "1", "soon", headers["KREE-Signature"], body, now=1000)


@pytest.mark.parametrize("missing", ["KREE-Event-Id", "KREE-Timestamp", "KREE-Signature"])
def test_signing_missing_headers(missing):
    body = b"{}"
    headers = signing.headers(SECRET, 1, body)
    headers[missing] = None
    with pytest.raises(signing.InvalidSignature, match="missing"):
        signing.verify(SECRET, headers["KREE-Event-Id"], headers["KREE-Timestamp"],
                       headers["KREE-Signature"], body)


# -- kree listen ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kree_listen_command():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KREE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "kree.cli", "listen", "--port", str(port), "--secret", SECRET],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).resolve().parent.parent,
        # SIGINT at its default, even when the test runner ignores it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue = queue.Queue()
    for stream, name in ((process.stdout, "out"), (process.stderr, "err")):
        threading.Thread(target=lambda s=stream, n=name: [lines.put((n, line)) for line in s],
                         daemon=True).start()

    def next_line(stream: str) -> str:
        deadline = time.monotonic() + 5
        while True:
            name, line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if name == stream:
                return line

    try:
        assert "listening on" in next_line("err")
        assert deliver(port, event(4), secret="other")[0] == 401
        assert "rejected" in next_line("err")
        assert deliver(port, event(4))[0] == 204
        assert json.loads(next_line("out")) == event(4)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
