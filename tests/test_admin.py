"""kree-admin's certificate and frontend commands, with no daemon running."""

import json
import subprocess
import sys

import pytest

from kree import pki


def admin(state, *args):
    return subprocess.run(
        [sys.executable, "-m", "kree.admin", "--state-dir", str(state), *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def test_ca_cert_and_frontend_lifecycle(state, tmp_path):
    result = admin(state, "cert", "issue", "--frontend", "portal")
    assert result.returncode == 1 and "kree-admin ca init" in result.stderr

    result = admin(state, "--json", "ca", "init")
    assert result.returncode == 0, result.stderr
    ca = json.loads(result.stdout)
    assert (state / "certs" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert pki.fingerprint(pki.load_certificate(state / "certs" / "ca.pem")) == ca["fingerprint"]
    result = admin(state, "ca", "init")
    assert result.returncode == 1 and "exists already" in result.stderr

    result = admin(state, "cert", "issue", "--server", "kree.example.org", "--server", "10.1.2.3")
    assert result.returncode == 0, result.stderr
    server = pki.load_certificate(state / "certs" / "server.pem")
    from cryptography import x509

    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["kree.example.org"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert pki.signed_by(server, pki.load_certificate(state / "certs" / "ca.pem"))

    result = admin(state, "--json", "cert", "issue", "--frontend", "portal")
    assert result.returncode == 0, result.stderr
    issued = json.loads(result.stdout)
    key = state / "certs" / "frontends" / "portal.key"
    assert issued["key"] == str(key) and key.stat().st_mode & 0o777 == 0o600
    cert = pki.load_certificate(state / "certs" / "frontends" / "portal.pem")
    assert issued["fingerprint"] == pki.fingerprint(cert)

    result = admin(state, "cert", "issue", "--frontend", "portal")
    assert result.returncode == 1 and "exists already" in result.stderr
    for bad in ("../evil", ".hidden", "a/b", ""):
        result = admin(state, "cert", "issue", "--frontend", bad)
        assert result.returncode == 1 and "frontend name" in result.stderr, bad
    assert not (tmp_path / "evil.pem").exists()

    # A certificate issued elsewhere by the same CA.
    elsewhere = pki.issue(pki.load(state / "certs" / "ca.pem", state / "certs" / "ca.key"),
                          "gateway", client=True)
    pki.save(elsewhere, tmp_path / "gateway.pem", tmp_path / "gateway.key")
    result = admin(state, "frontend", "add", "gateway", "--cert", str(tmp_path / "gateway.pem"))
    assert result.returncode == 0, result.stderr
    result = admin(state, "frontend", "add", "again", "--cert", str(tmp_path / "gateway.pem"))
    assert result.returncode == 1 and "exists already" in result.stderr

    # One from a CA kreed does not trust is refused.
    stranger = pki.issue(pki.create_ca("Other"), "stranger", client=True)
    pki.save(stranger, tmp_path / "stranger.pem", tmp_path / "stranger.key")
    result = admin(state, "frontend", "add", "stranger", "--cert", str(tmp_path / "stranger.pem"))
    assert result.returncode == 1 and "not signed by the CA" in result.stderr
    result = admin(state, "frontend", "add", "junk", "--cert", str(tmp_path / "gateway.key"))
    assert result.returncode == 1 and "not a PEM or DER certificate" in result.stderr

    result = admin(state, "frontend", "revoke", "portal")
    assert result.returncode == 0 and "revoked frontend portal" in result.stdout
    result = admin(state, "frontend", "revoke", "nobody")
    assert result.returncode == 1 and "no frontend 'nobody'" in result.stderr

    result = admin(state, "--json", "frontend", "list")
    listed = json.loads(result.stdout)
    assert set(listed) == {"frontends"}
    assert [(f["name"], f["revoked"] is not None) for f in listed["frontends"]] == [
        ("gateway", False), ("portal", True)]
    assert listed["frontends"][1]["fingerprint"] == issued["fingerprint"]
    table = admin(state, "frontend", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "FINGERPRINT", "CREATED", "REVOKED"]
    assert table[1].startswith("gateway") and table[1].endswith("-")


def test_frontend_commands_refuse_a_database_behind(state):
    assert admin(state, "db", "upgrade", "--revision", "0001").returncode == 0
    result = admin(state, "frontend", "list")
    assert result.returncode == 1 and "kree-admin db upgrade" in result.stderr


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "kree.admin", "--help"],
                            capture_output=True, text=True)
    for command in ("db", "ca", "cert", "frontend"):
        assert command in result.stdout
