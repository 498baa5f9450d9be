"""Free TCP ports for the launchers that need one named (DeepSpeed's ``--master_port``, ``TF_CONFIG``'s workers,
a multi-node torchrun's rendezvous endpoint).

A port found free is only free until someone else binds it. The usual way, binding port 0, draws from the
kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 on Linux), which every
outgoing connection also draws from: gloo opens one per pair of ranks, so with launches running side by side
the port handed out could be taken by another job's connection before the launcher binds it, and that launch
fails with "address already in use". Ports are therefore drawn at random from just below that range, where
only programs that name a port bind, and each is checked by binding it.
"""

from __future__ import annotations

import random
import socket

BELOW_EPHEMERAL = 12000  # how many ports below the ephemeral range to draw from
FALLBACK_RANGE = (32768, 60999)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (Linux; elsewhere the IANA range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            low, high = (int(word) for word in file.read().split())
        return low, high
    except (OSError, ValueError):
        return FALLBACK_RANGE


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, below the ephemeral range (module docs).

    Every socket stays bound until all ports are known, so the ports differ (torch's ``get_free_port()`` closes
    its socket at once: called twice, it may give the same port twice).
    """
    low = ephemeral_range()[0]
    candidates = range(max(1024, low - BELOW_EPHEMERAL), low)
    sockets: list[socket.socket] = []
    try:
        for port in random.sample(candidates, min(len(candidates), 50 * count)):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            if len(sockets) == count:
                break
        while len(sockets) < count:  # no port free below the range: let the kernel pick
            sockets.append(socket.socket())
            sockets[-1].bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
