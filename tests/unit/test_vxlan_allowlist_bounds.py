"""The allowlist is a security boundary: for a prefix of every length, IPv4 (/0../32) and IPv6
(/0../128), a mirrored frame whose inner source is the prefix's first or last address is forwarded,
and one whose source is one address before the first or after the last is dropped, in the kernel
(XDP and TC) and in the model alike. Prefixes sit at random places, with the high bits set half of
the time; /32 and /128 are the allowlist's host entries.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

import bpf
from bpf.vxlan import Allowlist, Config, Match, Mode, Model, Verdict, VxlanPipeline
from injector import templates

MACS = {"eth_src": "02:00:00:00:01:01", "eth_dst": "02:00:00:00:01:02"}
FORWARDED = {Mode.REDIRECT: bpf.XdpAction.REDIRECT, Mode.TC: bpf.TcAction.REDIRECT}
OUTSIDE_V4, OUTSIDE_V6 = "192.0.2.200", "2001:db8:ffff::1"  # destinations: match src only


def _frame(src: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if src.version == 4:
        inner = templates.udp4(src=str(src), dst=OUTSIDE_V4, **MACS)
    else:
        inner = templates.udp6(src=str(src), dst=OUTSIDE_V6, **MACS)
    return bytes(templates.vxlan(inner, vni=7))


def _prefixes(version: int, rng: random.Random) -> list:
    bits = 32 if version == 4 else 128
    kind = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    found = []
    for length in range(bits + 1):
        address = rng.getrandbits(bits) | rng.getrandbits(1) << (bits - 1)  # high bit set: half
        found.append(kind((address, length), strict=False))
    return found


@pytest.mark.parametrize("mode", [Mode.REDIRECT, Mode.TC], ids=lambda m: m.value)
@pytest.mark.parametrize("version", [4, 6])
def test_prefix_ends_and_one_past_them(mode, version):
    rng = random.Random(version)
    with VxlanPipeline(Config(mode=mode, match=Match.SRC)) as vx:
        vx.set_egress("lo", "02:00:00:00:03:02", src_mac="02:00:00:00:03:01")
        for net in _prefixes(version, rng):
            host = net.prefixlen == net.max_prefixlen
            allowlist = Allowlist.of([str(net.network_address) if host else str(net)])
            vx.set_allowlist(allowlist)
            model = Model(vx.config, egress=vx.egress())
            model.hosts, model.prefixes = set(allowlist.hosts), set(allowlist.prefixes)
            first, last = int(net.network_address), int(net.broadcast_address)
            cases = {first: True, last: True, first - 1: False, last + 1: False}
            for address, inside in cases.items():
                if not 0 <= address < 1 << net.max_prefixlen:
                    continue  # /0 has no address before or after it
                src = type(net.network_address)(address)
                frame = _frame(src)
                verdict = vx.program.test_run(frame).verdict
                want = model.feed(frame).verdict
                where = f"{net}, source {src}"
                assert (want is Verdict.FORWARD) == inside, f"the model: {want} for {where}"
                assert (verdict == FORWARDED[mode]) == inside, (
                    f"the kernel: {verdict!r} for {where}"
                )
