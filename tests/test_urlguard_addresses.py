"""
kree.urlguard.address_allowed: only globally routable addresses, with the
IPv4 address inside IPv6 forms checked as well (issue 14, item 6).
"""

import pytest

from kree.urlguard import address_allowed

REFUSED = [
    # IPv4 that is not the open Internet
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "100.64.0.1", "100.100.100.200", "100.127.255.254",  # shared space, cloud metadata
    "192.88.99.1",  # 6to4 relay anycast
    "192.0.0.170", "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.9",
    "224.0.0.1", "240.0.0.1", "255.255.255.255",
    # IPv6 that is not global
    "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "ff02::1",
    "2001:db8::1",
    # IPv6 carrying an internal IPv4
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:100.100.100.200",
    "::10.0.0.1",  # IPv4-compatible
    "2002:a9fe:a9fe::", "2002:7f00:1::1", "2002:a00:1::", "2002:6464:64c8::",  # 6to4
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b:1::a00:1",  # NAT64
    # not an address at all
    "localhost", "", "1.2.3",
]

ALLOWED = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.1",
    "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address):
    assert not address_allowed(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_global_addresses_are_allowed(address):
    assert address_allowed(address)
