"""
Who may talk to kreed: the TLS refusal matrix, on real connections to a
real daemon on loopback.
"""

import datetime
import http.client
import socket
import ssl

import pytest

from kree import pki
from live import Client, LiveKree, make_crl, write_issued

UTC = datetime.timezone.utc
REFUSED = (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LiveKree(tmp_path_factory.mktemp("tls"), frontends=("portal", "doomed")).start()
    yield server
    assert server.stop() == 0, server.log


def refused(client: Client) -> bool:
    """True if no HTTP response comes back (the handshake was refused)."""
    try:
        client.get("/v1/service-info", check=False)
    except REFUSED:
        return True
    return False


def test_registered_frontend_is_served(server):
    reply = server.client("portal").get("/v1/service-info")
    assert reply.status == 200
    assert reply.json["frontend"] == "portal"


def test_no_client_certificate_is_refused(server):
    assert refused(Client(server, None, None))


def test_self_signed_certificate_is_refused(server, tmp_path):
    own = pki.create_ca("portal")  # a self-signed certificate claiming the same name
    cert, key = write_issued(tmp_path, "self", own)
    assert refused(Client(server, cert, key))


def test_certificate_of_another_ca_is_refused(server, tmp_path):
    other_ca = pki.create_ca("Other CA")
    cert, key = write_issued(tmp_path, "other", pki.issue(other_ca, "portal", client=True))
    assert refused(Client(server, cert, key))


@pytest.mark.parametrize(
    "window",
    [
        ("expired", -30, -1),
        ("not yet valid", 1, 30),
    ],
)
def test_certificate_outside_its_validity_is_refused(server, tmp_path, window):
    name, start_days, end_days = window
    now = datetime.datetime.now(UTC)
    issued = pki.issue(
        server.load_ca(), "portal", client=True,
        not_before=now + datetime.timedelta(days=start_days),
        not_after=now + datetime.timedelta(days=end_days),
    )
    cert, key = write_issued(tmp_path, "window", issued)
    assert refused(Client(server, cert, key)), name


def test_unregistered_certificate_gets_403(server, tmp_path):
    cert, key = write_issued(tmp_path, "stranger", pki.issue(server.load_ca(), "stranger", client=True))
    reply = Client(server, cert, key).get("/v1/service-info")
    assert reply.status == 403
    assert reply.error == "unknown_frontend"
    assert reply.json["error"]["details"]["fingerprint"] == pki.fingerprint(
        pki.load_certificate(cert))


def test_revoking_a_frontend_takes_effect_on_its_next_request(server):
    client = server.client("doomed")
    assert client.get("/v1/service-info").status == 200
    result = server.admin("frontend", "revoke", "doomed")
    assert result.returncode == 0, result.stderr
    reply = client.get("/v1/service-info")
    assert reply.status == 403 and reply.error == "frontend_revoked"
    # The others are unaffected, and nothing was restarted.
    assert server.client("portal").get("/v1/service-info").status == 200
    assert server.process.poll() is None


def test_tls_below_1_2_is_refused(server):
    # The client offers only TLS 1.0 and 1.1 (if its OpenSSL allows them at
    # all, the server must refuse; if not, no protocol is left to agree on).
    old = server.client("portal", maximum=ssl.TLSVersion.TLSv1_1)
    old.context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    assert refused(old)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_served(server, version):
    client = server.client("portal", minimum=version, maximum=version)
    assert client.get("/v1/service-info").status == 200


def test_plain_http_gets_no_http_answer(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/service-info HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = sock.recv(4096)
    assert not data.startswith(b"HTTP/")


def test_certificate_on_the_crl_is_refused(tmp_path):
    server = LiveKree(tmp_path, frontends=("portal", "revoked"))
    revoked_cert = pki.load_certificate(server.frontend_files("revoked")[0])
    crl = tmp_path / "crl.pem"
    crl.write_bytes(make_crl(server.load_ca(), [revoked_cert]))
    with open(server.config_path, "a") as f:
        f.write(f'[tls]\ncrl = "{crl}"\n')
    server.start()
    try:
        assert refused(server.client("revoked"))
        assert server.client("portal").get("/v1/service-info").status == 200
    finally:
        assert server.stop() == 0


def test_missing_tls_files_stop_kreed_with_exit_2(tmp_path):
    server = LiveKree(tmp_path, frontends=())
    server.config.tls_path("cert").unlink()
    with pytest.raises(AssertionError, match="exited 2"):
        server.start()
    assert "kreed --dev" in server.log and "server.pem" in server.log
