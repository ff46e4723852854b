"""
Guarding outgoing requests (callbacks, fetching workflows and inputs,
uploading results): allowed schemes, the admin's host allow-list, and only
globally routable addresses, also for the IPv4 inside IPv6 addresses
(mapped, compatible, 6to4, Teredo, NAT64), unless the admin allows others
([fetch] allow_private_addresses).  Addresses are checked after
resolution, at subscription time and again before each request, since DNS
can change.

L{check_reachable} answers a L{CheckedURL}: the URL with the addresses its
host resolved to and that were checked.  L{kree.httpclient.PinnedAgent}
connects to exactly those addresses, so a name cannot resolve to an
allowed address for the check and to an internal one for the connection
(DNS rebinding); TLS (SNI, certificate) and the Host header keep the name.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

import attrs
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


# Ranges that ipaddress may call global but that are not the open Internet.
_NOT_PUBLIC = (
    ipaddress.ip_network("100.64.0.0/10"),    # shared address space (carrier NAT; cloud metadata)
    ipaddress.ip_network("192.88.99.0/24"),   # the deprecated 6to4 relay anycast
    ipaddress.ip_network("192.0.0.0/24"),     # IETF protocol assignments
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """
    The IPv4 addresses an IPv6 address carries and routes to: IPv4-mapped
    (C{::ffff:a.b.c.d}), IPv4-compatible (C{::a.b.c.d}), 6to4 (C{2002:AABB:CCDD::}),
    Teredo (server and client of C{2001:0::/32}) and NAT64 (C{64:ff9b::/96},
    C{64:ff9b:1::/48}, the IPv4 in the last 32 bits).
    """
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: nor ::1
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def address_allowed(address: str) -> bool:
    """
    Only globally routable addresses: none that is loopback, private,
    link-local, multicast, reserved, shared (100.64.0.0/10) or otherwise not
    global, and, for IPv6, none that carries such an IPv4 address inside
    (mapped, compatible, 6to4, Teredo, NAT64).
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        inside = embedded_ipv4(ip)
        if ip.ipv4_mapped is not None or ip in _IPV4_COMPATIBLE or any(ip in n for n in _NAT64):
            # Only a way of writing (or translating to) the IPv4 address.
            candidates = inside or [ip]
        else:
            candidates += inside
    return all(_public(candidate) for candidate in candidates)


def _public(ip) -> bool:
    if isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _NOT_PUBLIC):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                 or ip.is_loopback or ip.is_link_local)


@attrs.frozen
class CheckedURL:
    """A URL that passed L{check_reachable}, and the addresses it was checked with."""

    url: str
    parts: SplitResult
    #: Where its host resolved to, in the resolver's order of preference.
    addresses: tuple[str, ...]

    @property
    def port(self) -> int:
        return self.parts.port or (443 if self.parts.scheme.lower() == "https" else 80)


def _resolve(host: str, port: int) -> tuple[str, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise URLNotAllowed(f"host {host!r} cannot be resolved: {e.strerror}", host=host) from None
    # Once each, in the order getaddrinfo prefers (RFC 6724).
    return tuple(dict.fromkeys(info[4][0] for info in infos))


async def check_reachable(reactor, url: str, allowed_hosts: list[str],
                          allow_private: bool) -> CheckedURL:
    """
    L{check_url}, then every address the host resolves to (resolved in a
    thread).  Connect to the answer's addresses only (L{kree.httpclient.PinnedAgent}).
    """
    parts = check_url(url, allowed_hosts)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    addresses = await deferToThreadPool(reactor, reactor.getThreadPool(), _resolve,
                                        parts.hostname, port)
    if not addresses:
        raise URLNotAllowed(f"host {parts.hostname!r} resolves to no address",
                            host=parts.hostname)
    if not allow_private:
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            raise URLNotAllowed(
                f"host {parts.hostname!r} resolves to {', '.join(refused)}, an internal "
                "address (loopback, private, link-local, multicast or reserved); the admin "
                "can allow these with [fetch] allow_private_addresses", host=parts.hostname)
    return CheckedURL(url=url, parts=parts, addresses=addresses)
