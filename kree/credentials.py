"""
The certificate files of a state directory: creating the CA, kreed's
server certificate and frontend certificates (used by `kree-admin ca`,
`kree-admin cert` and `kreed --dev`).  Files only; registering a frontend
in the store is the caller's step.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from kree import pki
from kree.config import Config

DEV_FRONTEND = "dev"
DEV_SERVER_NAMES = ["localhost", "127.0.0.1", "::1"]


@attrs.frozen
class IssuedFiles:
    cert: Path
    key: Path
    fingerprint: str
    subject: str


def ca_key_path(config: Config) -> Path:
    return config.certs_dir / "ca.key"


def frontend_paths(config: Config, name: str) -> tuple[Path, Path]:
    directory = config.certs_dir / "frontends"
    return directory / f"{name}.pem", directory / f"{name}.key"


def valid_frontend_name(name: str) -> bool:
    return (
        0 < len(name) <= 100
        and name[0].isalnum()
        and all(c.isalnum() or c in "._-" for c in name)
    )


def init_ca(config: Config) -> IssuedFiles:
    ca = pki.create_ca()
    pki.save(ca, config.tls_path("ca"), ca_key_path(config))
    return _files(config.tls_path("ca"), ca_key_path(config), ca)


def load_ca(config: Config) -> pki.Issued:
    if not ca_key_path(config).exists():
        raise pki.CertificateError(
            f"no CA key at {ca_key_path(config)}: create a CA with `kree-admin ca init`"
        )
    return pki.load(config.tls_path("ca"), ca_key_path(config))


def issue_server(config: Config, names: list[str]) -> IssuedFiles:
    issued = pki.issue(load_ca(config), names[0], server_names=names)
    pki.save(issued, config.tls_path("cert"), config.tls_path("key"))
    return _files(config.tls_path("cert"), config.tls_path("key"), issued)


def issue_frontend(config: Config, name: str) -> IssuedFiles:
    if not valid_frontend_name(name):
        raise pki.CertificateError(
            f"frontend name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)"
        )
    cert_path, key_path = frontend_paths(config, name)
    issued = pki.issue(load_ca(config), name, client=True)
    pki.save(issued, cert_path, key_path)
    return _files(cert_path, key_path, issued)


def _files(cert: Path, key: Path, issued: pki.Issued) -> IssuedFiles:
    return IssuedFiles(
        cert, key, pki.fingerprint(issued.certificate), pki.subject(issued.certificate)
    )
