"""The lab's Wake-on-LAN: what a real NIC does while its machine is off, done by the switch.

The controller listens on the lab bridge on UDP ports 7 and 9 (where `wakeonlan` tools and
`ravada-node wake` send) and hands the MAC of every magic packet it sees to a callback, which
powers the matching node on if it is off.  A magic packet is six 0xFF bytes followed by the
target MAC sixteen times, anywhere in the datagram.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Callable

PORTS = (7, 9)
SYNC = b"\xff" * 6
MAGIC_SIZE = len(SYNC) + 16 * 6


def magic_mac(payload: bytes) -> str | None:
    """The MAC (aa:bb:cc:dd:ee:ff) a datagram wakes, or None when it holds no magic packet."""
    start = payload.find(SYNC)
    # Every place six 0xFF start is tried: a longer run of them ends where the MAC begins.
    while start != -1 and start + MAGIC_SIZE <= len(payload):
        mac = payload[start + 6:start + 12]
        # No NIC has a group MAC (multicast bit set, e.g. all 0xFF): only a unicast one wakes.
        if not mac[0] & 1 and payload[start + 6:start + MAGIC_SIZE] == mac * 16:
            return ":".join(f"{byte:02x}" for byte in mac)
        start = payload.find(SYNC, start + 1)
    return None


class Listener:
    """UDP sockets on `device` (the lab bridge), ports 7 and 9, served by one daemon thread."""

    def __init__(self, device: str, on_magic: Callable[[str, str], None], ports: tuple[int, ...] = PORTS):
        self.on_magic = on_magic
        self.sockets = []
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            sock.bind(("", port))
            self.sockets.append(sock)
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="wake-on-lan", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _serve(self) -> None:
        while not self.closing.is_set():
            ready, _, _ = select.select(self.sockets, [], [], 0.5)
            for sock in ready:
                payload, (sender, _port) = sock.recvfrom(2048)
                mac = magic_mac(payload)
                if mac is not None:
                    self.on_magic(mac, sender)

    def close(self) -> None:
        self.closing.set()
        if self.thread.is_alive():
            self.thread.join(2)
        for sock in self.sockets:
            sock.close()
