"""
TLS for the listener every dialect shares: the server context and the peer's identity.

Every connection must present a client certificate that chains to a CA the
admin configured ([tls] ca, one or more PEM certificates) and, when [tls] crl
is set, is not on that CRL; otherwise the handshake fails.  TLS 1.2 is the
minimum.  Which frontend a verified certificate belongs to is decided per
request by its SHA-256 fingerprint (kree.web.resource), so revoking a
frontend takes effect on its next request.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from OpenSSL import crypto
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, trustRootFromCertificates

from kree import pki
from kree.config import Config
from kree.errors import ConfigError


def _read(path: Path, what: str, problems: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as e:
        problems.append(f"[tls] {what} {path}: {e.strerror}")
        return None


def server_options(config: Config) -> CertificateOptions:
    """
    The server's CertificateOptions, client certificates required.

    @raise ConfigError: a TLS file is missing or unreadable.
    """
    problems: list[str] = []
    ca_data = _read(config.tls_path("ca"), "ca", problems)
    # Read here only to report every missing file at once; pki.load parses them.
    _read(config.tls_path("cert"), "cert", problems)
    _read(config.tls_path("key"), "key", problems)
    crl_path = config.tls_path("crl")
    crl_data = _read(crl_path, "crl", problems) if crl_path else None
    if problems:
        problems.append(
            "create development certificates with `kreed --dev`, or a CA and server "
            "certificate with `kree-admin ca init` and `kree-admin cert issue --server HOST`"
        )
        raise ConfigError(problems)
    try:
        cas = x509.load_pem_x509_certificates(ca_data)
        issued = pki.load(config.tls_path("cert"), config.tls_path("key"))
        crl = x509.load_pem_x509_crl(crl_data) if crl_data is not None else None
    except (ValueError, pki.CertificateError) as e:
        raise ConfigError([f"[tls] {e}"]) from None
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(issued.key),
        certificate=crypto.X509.from_cryptography(issued.certificate),
        # On a server, a trust root makes the client certificate required
        # and verified against it.
        trustRoot=trustRootFromCertificates(
            [Certificate(crypto.X509.from_cryptography(ca)) for ca in cas]
        ),
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    if crl is not None:
        store = options.getContext().get_cert_store()
        store.add_crl(crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    return options


def peer_fingerprint(transport) -> str | None:
    """SHA-256 fingerprint of the verified client certificate, or None."""
    cached = getattr(transport, "_kree_peer_fingerprint", None)
    if cached is not None:
        return cached
    peer = transport.getPeerCertificate()
    if peer is None:
        return None
    fingerprint = pki.fingerprint(peer.to_cryptography())
    transport._kree_peer_fingerprint = fingerprint
    return fingerprint
