"""The traffic counter's counts as Prometheus metrics (``trafcount --prometheus [HOST]:PORT``).

A collector reads the tables at each scrape (no copy kept between scrapes) and serves, in a registry
of its own:

- ``trafcount_packets_total`` and ``trafcount_bytes_total``, labelled ``interface``, ``direction``,
  ``key`` (src or dst: which address ``address`` is), ``address`` and ``protocol`` (tcp, udp, or
  the IP protocol number);
- ``trafcount_entries_created_total`` and ``trafcount_entries_evicted_total`` (the LRU's);
- ``trafcount_packets_lost_total{reason}`` (entry_gone, no_room) and
  ``trafcount_frames_unparsed_total{status}`` (the parse status, e.g. PARSE_NOT_IP).

An address the LRU evicts disappears from the series and comes back from zero, which Prometheus
reads as a counter reset. Not for: the time series (``bpf.trafcount.series``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from bpf.trafcount.trafcount import TrafCount

PROTOCOLS = {6: "tcp", 17: "udp"}


def protocol_label(proto: int) -> str:
    return PROTOCOLS.get(proto, str(proto))


@dataclass(eq=False)  # the registry keys collectors by identity
class TrafCollector(Collector):
    tc: TrafCount
    interface: str
    direction: str

    def collect(self) -> Iterator[CounterMetricFamily]:
        labels = ["interface", "direction", "key", "address", "protocol"]
        packets = CounterMetricFamily(
            "trafcount_packets", "Packets counted per address and protocol", labels=labels
        )
        octets = CounterMetricFamily(
            "trafcount_bytes",
            f"Bytes ({self.tc.config.bytes.value}) counted per address and protocol",
            labels=labels,
        )
        key = self.tc.config.key.value
        for k, (p, b) in sorted(self.tc.counts().items()):
            values = [self.interface, self.direction, key, str(k.address), protocol_label(k.proto)]
            packets.add_metric(values, p)
            octets.add_metric(values, b)
        yield packets
        yield octets
        totals = self.tc.totals()
        created = CounterMetricFamily("trafcount_entries_created", "Table entries created")
        created.add_metric([], totals.created)
        evicted = CounterMetricFamily("trafcount_entries_evicted", "Entries the LRU evicted")
        evicted.add_metric([], totals.evicted)
        lost = CounterMetricFamily(
            "trafcount_packets_lost", "Packets not counted", labels=["reason"]
        )
        lost.add_metric(["entry_gone"], totals.entry_gone)
        lost.add_metric(["no_room"], totals.no_room)
        unparsed = CounterMetricFamily(
            "trafcount_frames_unparsed", "Frames not parsed to IP", labels=["status"]
        )
        for status, n in self.tc.unparsed().items():
            unparsed.add_metric([status], n)
        yield from (created, evicted, lost, unparsed)


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST]:PORT`` as (host, port); host defaults to every address. ValueError names the fault."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 0xFFFF:
        raise ValueError(f"--prometheus {text!r}: give [HOST]:PORT, PORT 1..65535 (e.g. :9435)")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(collector: TrafCollector, host: str, port: int):
    """Serve the collector's metrics at http://HOST:PORT/metrics; the server (``shutdown()`` it)."""
    registry = CollectorRegistry()
    registry.register(collector)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
