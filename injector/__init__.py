"""Traffic generation: one description (``spec``) of templates (``templates``, ``malformed``) and field
variation, resolved to a byte-level field program (``program``) that the senders share: exact packet
lists (``scapy_backend``), capture replay (``pcap_backend``), TRex streams (``trex_backend``) and the
in-kernel field engine (``xdp``). Importing this package imports nothing: the TRex worker must load
without the project's scapy.
"""
