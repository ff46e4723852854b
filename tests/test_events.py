"""
Callbacks and event streams, with real listeners on loopback and a real
kreed: signed, ordered, at-least-once delivery across listener outages and
daemon kills; 410; slow listeners; server-sent events.
"""

import http.client
import json
import socket
import time

import pytest

from kree import signing
from kree.listener import Listener
from live import LiveKree, submit, wait_for_state
from waiting import holds_for

CONFIG = """
[fetch]
allow_private_addresses = true
[events]
# Short retries, but enough of them (60 s in all) that a listener kept away
# for a while on a busy machine is still reached before a delivery is given up.
retry_schedule_seconds = [0.2, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,
                          1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                          1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                          1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
failing_after = 2
timeout_seconds = 2
[supervisor]
max_running = 4
stop_grace_seconds = 2
monitor_interval_seconds = 0.5
"""
SECRET = "s" * 32


@pytest.fixture
def server(tmp_path):
    server = LiveKree(tmp_path, frontends=("portal",), config_text=CONFIG).start()
    yield server
    server.stop()


@pytest.fixture
def listeners():
    started = []

    def make(**kwargs):
        listener = Listener(SECRET, **kwargs).start()
        started.append(listener)
        return listener

    yield make
    for listener in started:
        listener.stop()


def wait_for_subscription(client, sub_id: str, condition, timeout: float = 60) -> dict:
    """The subscription's status once C{condition} holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/v1/subscriptions/{sub_id}").json
        if condition(status):
            return status
        assert time.monotonic() < deadline, f"subscription stayed {status}"
        time.sleep(0.05)


def subscribe(client, url, **fields):
    reply = client.post("/v1/subscriptions", {"url": url, "secret": SECRET, **fields})
    assert reply.status == 201, reply.body
    return reply.json


def job_log(client, job_id):
    return client.get(f"/v1/jobs/{job_id}/events?limit=500").json["events"]


def of_job(events, job_id):
    return [e for e in events if e["job"] == job_id]


def finished(job_id):
    return lambda events: any(e["job"] == job_id and e["type"] == "job.state"
                              and e["data"]["to"] in ("FINISHED", "FAILED", "ABORTED")
                              for e in events)


def test_a_listener_gets_every_event_in_order_and_signed(server, listeners):
    client = server.client("portal")
    listener = listeners()
    sub = subscribe(client, listener.url)
    assert sub["secret"] == SECRET and "secret" not in client.get("/v1/subscriptions").json[
        "subscriptions"][0]
    job = submit(client, "arithmetic.xml")
    listener.wait_for(finished(job["id"]))
    received = of_job(listener.events, job["id"])
    assert received == job_log(client, job["id"])  # the same events, in the same order
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert [e["data"]["text"] for e in received if e["type"] == "job.message"] == [
        "11", "25", "44", "70", "105"]
    assert listener.rejected == 0


def test_filters_by_job_and_type(server, listeners):
    client = server.client("portal")
    everything, states_of_one = listeners(), listeners()
    first = submit(client, "hello.xml", queue=False)
    second = submit(client, "hello.xml", queue=False)
    subscribe(client, everything.url)
    subscribe(client, states_of_one.url, job=second["id"], events=["job.state"])
    for job in (first, second):
        client.post(f"/v1/jobs/{job['id']}/queue")
    everything.wait_for(lambda ev: finished(first["id"])(ev) and finished(second["id"])(ev))
    states_of_one.wait_for(finished(second["id"]))
    holds_for(lambda: {(e["job"], e["type"]) for e in states_of_one.events} == {
        (second["id"], "job.state")}, "only the second job's states", duration=1.0)


def test_listener_down_then_back_gets_everything_in_order(server, listeners):
    client = server.client("portal")
    listener = listeners()
    port = listener.port
    sub = subscribe(client, listener.url)
    listener.stop()  # connection refused from now on
    job = submit(client, "hello.xml")
    wait_for_state(client, job["id"], "FINISHED")
    status = wait_for_subscription(client, sub["id"], lambda s: s["consecutive_failures"] >= 2)
    assert status["status"] == "failing"
    assert status["last_error"]
    shown = server.admin("--json", "subscriptions", "list")
    assert shown.returncode == 0, shown.stderr
    (row,) = json.loads(shown.stdout)["subscriptions"]
    assert row["id"] == sub["id"] and row["status"] == "failing" and row["frontend"] == "portal"
    assert row["pending"] >= 1 and row["consecutive_failures"] >= 2 and row["last_error"]
    assert "failing" in server.admin("subscriptions", "list").stdout
    back = listeners(port=port)
    back.wait_for(finished(job["id"]))
    assert of_job(back.events, job["id"]) == job_log(client, job["id"])
    assert client.get(f"/v1/subscriptions/{sub['id']}").json["status"] == "active"

    # An answer other than 2xx is a failure too, retried until it succeeds.
    back.status = 503
    second = submit(client, "hello.xml")
    wait_for_state(client, second["id"], "FINISHED")
    wait_for_subscription(client, sub["id"], lambda s: s["consecutive_failures"] >= 2)
    back.status = 204
    back.wait_for(finished(second["id"]))
    assert of_job(back.events, second["id"]) == job_log(client, second["id"])


def test_pending_deliveries_survive_a_daemon_kill(server, listeners):
    client = server.client("portal")
    listener = listeners()
    listener.status = 503
    subscribe(client, listener.url)
    job = submit(client, "hello.xml")
    wait_for_state(client, job["id"], "FINISHED")
    server.process.kill()  # kill -9 with every delivery still pending
    server.process.wait()
    server._stderr.close()
    # Only the oldest delivery was attempted (answered 503): order holds the rest back.
    assert {e["seq"] for e in of_job(listener.events, job["id"])} <= {1}
    listener.status = 204
    server.start()
    client = server.client("portal")
    listener.wait_for(finished(job["id"]))
    assert of_job(listener.events, job["id"]) == job_log(client, job["id"])


def test_410_ends_the_subscription(server, listeners):
    client = server.client("portal")
    listener = listeners()
    listener.status = 410
    sub = subscribe(client, listener.url)
    job = submit(client, "hello.xml")
    wait_for_state(client, job["id"], "FINISHED")
    wait_for_subscription(client, sub["id"], lambda s: s["status"] == "ended")
    count = len(listener.events)
    assert count == 1  # the first delivery was answered 410; nothing after it
    # A control subscription made now gets the next job's events: once it has
    # them all, the ended one would have had them too.
    control = listeners()
    subscribe(client, control.url)
    later = submit(client, "hello.xml")
    control.wait_for(finished(later["id"]), timeout=60)
    assert len(listener.events) == count


def test_a_slow_listener_does_not_hold_up_a_fast_one(server, listeners):
    client = server.client("portal")
    slow, fast = listeners(), listeners()
    slow.delay = 1.5
    subscribe(client, slow.url)
    subscribe(client, fast.url)
    job = submit(client, "hello.xml")
    fast.wait_for(finished(job["id"]), timeout=60)
    assert len(slow.events) <= 2  # still working through its first deliveries
    slow.delay = 0
    slow.wait_for(finished(job["id"]), timeout=30)


def test_subscriptions_are_per_frontend_and_can_be_deleted(server, listeners):
    client = server.client("portal")
    listener = listeners()
    sub = subscribe(client, listener.url)
    assert client.get(f"/v1/subscriptions/{sub['id']}").json["url"] == listener.url
    assert client.delete(f"/v1/subscriptions/{sub['id']}").status == 204
    assert client.get(f"/v1/subscriptions/{sub['id']}").status == 404
    control = listeners()
    subscribe(client, control.url)
    job = submit(client, "hello.xml")
    control.wait_for(finished(job["id"]), timeout=60)  # the deleted one would have had them
    assert listener.events == []


def read_sse(server, job_id, *, last_event_id=None, count, timeout=15, on_open=None):
    """
    Open the stream with http.client and read C{count} events from it;
    C{on_open()} is called once the stream's head has arrived.
    """
    client = server.client("portal")
    connection = http.client.HTTPSConnection("localhost", server.port, context=client.context,
                                             timeout=timeout)
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    connection.request("GET", f"/v1/jobs/{job_id}/events", headers=headers)
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("content-type").startswith("text/event-stream")
    if on_open is not None:
        on_open()
    events, current = [], {}
    while len(events) < count:
        line = response.readline().decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if not line:
            if current:
                events.append(current)
                current = {}
            continue
        field, _, value = line.partition(": ")
        current[field] = value
    connection.close()
    return events


def test_server_sent_events_resume_from_last_event_id(server):
    client = server.client("portal")
    job = submit(client, "sleep-loop.xml", parameters={
        ".sleeper.period": 50, ".sleeper.SDF Director.iterations": 20})
    first = read_sse(server, job["id"], count=4)
    assert [int(e["id"]) for e in first] == [1, 2, 3, 4]
    assert json.loads(first[0]["data"])["type"] == first[0]["event"] == "job.created"
    rest = read_sse(server, job["id"], last_event_id=4, count=6)
    assert [int(e["id"]) for e in rest] == [5, 6, 7, 8, 9, 10]  # no gap, no repeat
    wait_for_state(client, job["id"], "FINISHED")
    log = job_log(client, job["id"])
    assert [json.loads(e["data"]) for e in first + rest] == log[:10]


def test_server_sent_events_follow_new_events_live(server):
    client = server.client("portal")
    job = submit(client, "hello.xml", queue=False)
    queued = []

    def queue_now():
        # The stream is open and has nothing to send yet: what follows is live.
        queued.append(client.post(f"/v1/jobs/{job['id']}/queue").status)

    events = read_sse(server, job["id"], last_event_id=1, count=1, timeout=60,
                      on_open=queue_now)
    assert queued == [200]
    assert json.loads(events[0]["data"])["data"]["to"] == "QUEUED"


def test_signing_refuses_tampering():
    body = b'{"id": 1}'
    headers = signing.headers(SECRET, 1, body)
    signing.verify(SECRET, headers["KREE-Event-Id"], headers["KREE-Timestamp"],
                   headers["KREE-Signature"], body)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(SECRET, headers["KREE-Event-Id"], headers["KREE-Timestamp"],
                       headers["KREE-Signature"], b'{"id": 2}')


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TLSListener:
    """An https listener (standard library ssl) that records verified events."""

    def __init__(self, cert, key, *, client_ca=None):
        import http.server
        import ssl
        import threading

        received = self.events = []
        self.peer_names = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signing.verify(SECRET, self.headers["KREE-Event-Id"],
                               self.headers["KREE-Timestamp"],
                               self.headers["KREE-Signature"], body)
                peer = self.connection.getpeercert()
                if peer:
                    outer.peer_names.append(dict(x[0] for x in peer["subject"])["commonName"])
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        if client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(client_ca))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def listener_ca(tmp_path):
    from kree import pki

    ca = pki.create_ca("Listener CA")
    pki.save(ca, tmp_path / "listener-ca.pem", tmp_path / "listener-ca.key")
    return ca


def events_server(tmp_path, events_settings: str) -> LiveKree:
    base = tmp_path / "kree"
    base.mkdir()
    return LiveKree(base, frontends=("portal",),
                    config_text=CONFIG.replace("[events]", f"[events]\n{events_settings}"))


def wait_until_finished(listener, job_id):
    deadline = time.monotonic() + 20
    while not finished(job_id)(listener.events):
        assert time.monotonic() < deadline, listener.events
        time.sleep(0.05)


def test_https_listeners_are_verified(tmp_path):
    from kree import pki

    ca = listener_ca(tmp_path)
    server = events_server(tmp_path, f'ca = "{tmp_path / "listener-ca.pem"}"')
    good = pki.issue(ca, "localhost", server_names=["localhost", "127.0.0.1"])
    wrong = pki.issue(ca, "elsewhere", server_names=["elsewhere.example"])
    pki.save(good, tmp_path / "good.pem", tmp_path / "good.key")
    pki.save(wrong, tmp_path / "wrong.pem", tmp_path / "wrong.key")
    ok, impostor = (TLSListener(tmp_path / "good.pem", tmp_path / "good.key"),
                    TLSListener(tmp_path / "wrong.pem", tmp_path / "wrong.key"))
    server.start()
    try:
        client = server.client("portal")
        subscribe(client, f"https://localhost:{ok.port}/")
        bad = subscribe(client, f"https://localhost:{impostor.port}/")
        job = submit(client, "hello.xml")
        wait_until_finished(ok, job["id"])
        assert of_job(ok.events, job["id"]) == job_log(client, job["id"])
        # A certificate for another name is refused (service_identity).
        state = client.get(f"/v1/subscriptions/{bad['id']}").json
        assert impostor.events == []
        assert state["consecutive_failures"] >= 1 and state["last_error"]
    finally:
        server.stop()
        ok.stop()
        impostor.stop()


def test_kree_presents_its_certificate_to_listeners_that_ask(tmp_path):
    from kree import pki

    ca = listener_ca(tmp_path)
    pki.save(pki.issue(ca, "kree", client=True), tmp_path / "kree-client.pem",
             tmp_path / "kree-client.key")
    pki.save(pki.issue(ca, "localhost", server_names=["localhost", "127.0.0.1"]),
             tmp_path / "l.pem", tmp_path / "l.key")
    server = events_server(tmp_path, f'ca = "{tmp_path / "listener-ca.pem"}"\n'
                                     f'client_cert = "{tmp_path / "kree-client.pem"}"\n'
                                     f'client_key = "{tmp_path / "kree-client.key"}"')
    listener = TLSListener(tmp_path / "l.pem", tmp_path / "l.key",
                           client_ca=tmp_path / "listener-ca.pem")
    server.start()
    try:
        client = server.client("portal")
        subscribe(client, f"https://localhost:{listener.port}/")
        job = submit(client, "hello.xml")
        wait_until_finished(listener, job["id"])
        assert set(listener.peer_names) == {"kree"}
    finally:
        server.stop()
        listener.stop()
