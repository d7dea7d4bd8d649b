"""Real traffic through the namespaces' own stacks: UDP sockets opened inside a namespace, and a
ping-pong between two of them (a flow seen both ways, ARP and routing done by the kernel).

Not for: traffic at rate (``injector``), or frames the stack would not send (``injector``,
``harness.capture``).
"""

from __future__ import annotations

import socket

from bpf import netns

REPLY_TIMEOUT = 2.0  # seconds a datagram may take through the topology


def udp_socket(namespace: str | None, address: str, port: int) -> socket.socket:
    """A UDP socket of ``namespace``'s stack, bound to ``address``:``port``."""
    with netns.entered(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    sock.settimeout(REPLY_TIMEOUT)
    return sock


def ping_pong(client: socket.socket, server: socket.socket, rounds: int = 1) -> None:
    """``rounds`` times: ``client`` sends b"ping" (4 bytes of payload) to ``server``, which
    answers b"pong" (4 bytes). TimeoutError if a datagram does not arrive, RuntimeError if
    another does."""
    for _ in range(rounds):
        client.sendto(b"ping", server.getsockname())
        data, peer = server.recvfrom(100)
        if data != b"ping":
            raise RuntimeError(f"{server.getsockname()} got {data!r} from {peer}, not b'ping'")
        server.sendto(b"pong", peer)
        reply = client.recv(100)
        if reply != b"pong":
            raise RuntimeError(f"{client.getsockname()} got {reply!r}, not b'pong'")
