"""
Guarding outgoing requests (callbacks now; workflow and input fetching next):
allowed schemes, the admin's host allow-list, and no loopback, link-local,
private, multicast or otherwise reserved address unless the admin allows
them ([fetch] allow_private_addresses).  Addresses are checked after
resolution, at subscription time and again before each request, since DNS
can change.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from twisted.internet.threads import deferToThreadPool

from kree.errors import KreeError

MAX_URL_LENGTH = 4096


class URLNotAllowed(KreeError):
    status = 422
    code = "uri_not_allowed"


def host_allowed(host: str, allowed_hosts: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed_hosts:
        pattern = pattern.lower().rstrip(".")
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def check_url(url: object, allowed_hosts: list[str], *, schemes=("https", "http")) -> SplitResult:
    """Syntax, scheme and host allow-list (no resolution)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise URLNotAllowed(f"a URL of at most {MAX_URL_LENGTH} characters is required")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as e:
        raise URLNotAllowed(f"{url!r} is not a valid URL: {e}", url=url) from None
    if parts.scheme.lower() not in schemes:
        raise URLNotAllowed(f"scheme {parts.scheme or '(none)'!r} is not allowed "
                            f"(allowed: {', '.join(schemes)})", url=url)
    if not parts.hostname:
        raise URLNotAllowed(f"{url!r} has no host", url=url)
    if parts.username or parts.password:
        raise URLNotAllowed("credentials in URLs are not allowed", url=url)
    if not host_allowed(parts.hostname, allowed_hosts):
        raise URLNotAllowed(f"host {parts.hostname!r} is not on the allowed list", url=url,
                            host=parts.hostname)
    return parts


def address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise URLNotAllowed(f"host {host!r} cannot be resolved: {e.strerror}", host=host) from None
    return sorted({info[4][0] for info in infos})


async def check_reachable(reactor, url: str, allowed_hosts: list[str],
                          allow_private: bool) -> SplitResult:
    """L{check_url}, then every address the host resolves to (in a thread)."""
    parts = check_url(url, allowed_hosts)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await deferToThreadPool(reactor, reactor.getThreadPool(), _resolve,
                                        parts.hostname, port)
    if not allow_private:
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            raise URLNotAllowed(
                f"host {parts.hostname!r} resolves to {', '.join(refused)}, an internal "
                "address (loopback, private, link-local, multicast or reserved); the admin "
                "can allow these with [fetch] allow_private_addresses", host=parts.hostname)
    return parts
