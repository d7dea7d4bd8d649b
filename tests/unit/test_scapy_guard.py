"""The pytest plugin refuses scapy's neighbour lookups: an Ether() without dst would ARP on the host."""

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether


@pytest.mark.parametrize(
    "l3", [IP(dst="192.0.2.77"), IPv6(dst="2001:db8::77")], ids=["ipv4", "ipv6"]
)
def test_scapy_never_resolves_macs_over_the_host_network(l3):
    with pytest.raises(RuntimeError, match=r"explicit Ether\(dst=\.\.\.\)"):
        bytes(Ether() / l3 / UDP())
    assert bytes(Ether(dst="02:00:00:00:00:01") / l3 / UDP())
