"""Templates build the headers they promise, and every malformed variant is wrong in the stated way."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE, PPPoED
from scapy.layers.vxlan import VXLAN
from scapy.packet import raw

from injector import malformed, templates
from injector.program import ChecksumFix, ChecksumKind, checksum_of


def reparsed(pkt):
    return Ether(raw(pkt))


@pytest.mark.parametrize(
    ("build", "layers"),
    [
        (templates.udp4, [Ether, IP, UDP]),
        (templates.tcp4, [Ether, IP, TCP]),
        (templates.udp6, [Ether, IPv6, UDP]),
        (templates.tcp6, [Ether, IPv6, TCP]),
        (templates.icmp4, [Ether, IP, ICMP]),
        (templates.icmp6, [Ether, IPv6, ICMPv6EchoRequest]),
        (templates.pppoe_session, [Ether, PPPoE, PPP, IP, UDP]),
        (templates.padi, [Ether, PPPoED]),
    ],
)
def test_template_layers(build, layers):
    pkt = reparsed(build())
    for cls in layers:
        assert pkt.haslayer(cls), f"{build.__name__}: expected {cls.__name__} in {pkt.summary()}"


def test_vlan_tag():
    pkt = reparsed(templates.udp4(vlan=42))
    assert pkt[Dot1Q].vlan == 42
    assert pkt[Dot1Q].type == 0x0800


def test_vxlan_sets_only_the_i_flag_and_zero_outer_checksum():
    frame = raw(templates.vxlan(templates.tcp4(src="10.1.1.1"), vni=0xABCDE))
    pkt = Ether(frame)
    assert pkt[UDP].dport == 4789
    assert pkt[UDP].chksum == 0
    assert frame[42] == 0x08, "VXLAN flags must be 0x08 (I bit), not scapy's GPE default 0x0c"
    assert frame[46:49] == bytes.fromhex("0abcde")
    assert pkt[VXLAN].payload[IP].src == "10.1.1.1"


def test_pppoe_session_carries_ppp_ipv4_and_ipv6():
    v4 = reparsed(templates.pppoe_session(session_id=0x1234))
    assert (v4[Ether].type, v4[PPPoE].code, v4[PPPoE].sessionid) == (0x8864, 0, 0x1234)
    assert v4[PPP].proto == 0x0021
    assert v4[PPPoE].len == len(v4[PPP])
    v6 = reparsed(templates.pppoe_session(templates.udp6()[IPv6]))
    assert v6[PPP].proto == 0x0057


def test_padi_is_broadcast_discovery_with_service_name():
    pkt = reparsed(templates.padi(host_uniq=b"\x01\x02"))
    assert pkt.dst == "ff:ff:ff:ff:ff:ff"
    assert (pkt.type, pkt[PPPoED].code, pkt[PPPoED].sessionid) == (0x8863, 0x09, 0)
    tags = [t.tag_type for t in pkt[PPPoED].payload.tag_list]
    assert tags == [0x0101, 0x0103]


def test_pad_to_keeps_lengths_and_checksums_consistent():
    pkt = Ether(raw(templates.pad_to(templates.udp4(payload=b"abc"), 128)))
    assert len(raw(pkt)) == 128
    assert pkt[IP].len == 128 - 14
    assert pkt[UDP].len == 128 - 34
    rebuilt = pkt.copy()
    del rebuilt[IP].chksum, rebuilt[UDP].chksum
    assert raw(Ether(raw(rebuilt))) == raw(pkt)


def test_pad_to_rejects_smaller_size():
    with pytest.raises(ValueError, match="smaller than the template"):
        templates.pad_to(templates.udp4(), 20)


def test_layers_with_offsets_of_vxlan():
    offsets = [
        (type(layer).__name__, o)
        for layer, o in templates.layers_with_offsets(templates.vxlan(templates.udp4()))
    ]
    assert offsets == [
        ("Ether", 0),
        ("IP", 14),
        ("UDP", 34),
        ("VXLAN", 42),
        ("Ether", 50),
        ("IP", 64),
        ("UDP", 84),
    ]


ALL_TEMPLATES = [
    templates.udp4(payload=b"0123456789"),
    templates.tcp4(payload=b"0123456789"),
    templates.udp6(payload=b"0123456789"),
    templates.icmp4(payload=b"0123456789"),
    templates.pppoe_session(),
    templates.vxlan(templates.udp4(payload=b"0123456789")),
]


@pytest.mark.parametrize("pkt", ALL_TEMPLATES, ids=lambda p: p.summary())
def test_truncations_cover_every_header(pkt):
    frame = raw(pkt)
    layers = templates.layers_with_offsets(pkt)
    cuts = {v.name: v for v in malformed.truncations(pkt)}
    for index, (layer, offset) in enumerate(layers[1:], start=1):
        nth = sum(type(other) is type(layer) for other, _ in layers[:index])
        name = type(layer).__name__ + (f":{nth}" if nth else "")
        missing = cuts[f"truncated:{name}:0"]
        assert missing.packet == frame[:offset], f"{name} missing: frame must end at {offset}"
        header = len(raw(layer)) - len(raw(layer.payload))
        if header > 1:
            half = cuts[f"truncated:{name}:{header // 2}"]
            assert len(half.packet) == offset + header // 2
    assert all(v.reason for v in cuts.values())


def ipv4_header_ok(frame: bytes, offset: int) -> bool:
    fix = ChecksumFix(ChecksumKind.IPV4_HEADER, offset, offset, 4)
    return checksum_of(frame, fix) == int.from_bytes(frame[offset + 10 : offset + 12], "big")


def test_ipv4_variants_break_one_thing_each():
    pkt = templates.udp4(payload=b"0123456789abcdef")
    found = {v.name: v for v in malformed.variants(pkt)}
    ihl4 = found["ipv4:ihl_below_5"].packet
    assert ihl4[14] & 0x0F == 4
    assert found["ipv4:ihl_beyond_packet"].packet[14] == 0x4F
    total = int.from_bytes(found["ipv4:total_length_beyond_frame"].packet[16:18], "big")
    assert total == Ether(raw(pkt))[IP].len + 100
    assert int.from_bytes(found["ipv4:total_length_below_header"].packet[16:18], "big") == 19
    assert ipv4_header_ok(found["ipv4:total_length_below_header"].packet, 14)
    assert not ipv4_header_ok(found["ipv4:bad_checksum"].packet, 14)
    with_options = Ether(found["ipv4:options"].packet)
    assert with_options[IP].ihl == 6 and with_options.haslayer(UDP)
    assert ipv4_header_ok(found["ipv4:options"].packet, 14)
    first = Ether(found["ipv4:first_fragment"].packet)[IP]
    assert (first.flags.MF, first.frag, len(first.payload)) == (True, 0, 8)
    later = Ether(found["ipv4:non_first_fragment"].packet)[IP]
    assert later.frag == 1 and not later.flags.MF
    assert ipv4_header_ok(found["ipv4:non_first_fragment"].packet, 14)


def test_l4_variants():
    udp = {v.name: v for v in malformed.variants(templates.udp4(payload=b"xyz"))}
    good = Ether(raw(templates.udp4(payload=b"xyz")))[UDP].chksum
    assert Ether(udp["udp:bad_checksum"].packet)[UDP].chksum == (good + 1) & 0xFFFF
    assert Ether(udp["udp:length_7"].packet)[UDP].len == 7
    tcp = {v.name: v for v in malformed.variants(templates.tcp4())}
    assert Ether(tcp["tcp:data_offset_4"].packet)[TCP].dataofs == 4
    v6 = {v.name: v for v in malformed.variants(templates.udp6())}
    assert Ether(v6["ipv6:payload_length_beyond_frame"].packet)[IPv6].plen == 8 + 100


def test_variant_by_name_lists_known_names():
    with pytest.raises(KeyError, match="ipv4:bad_checksum"):
        malformed.variant(templates.udp4(), "no-such-variant")
