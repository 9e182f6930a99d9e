"""Wake-on-LAN: the magic packet (6 x 0xFF, then the MAC 16 times), sent as a UDP broadcast
to ports 7 (echo) and 9 (discard), the ports NICs and `wakeonlan` use."""
from __future__ import annotations

import re
import socket

PORTS = (7, 9)
MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")


def parse_mac(text: str) -> bytes:
    """The 6 bytes of a MAC written aa:bb:cc:dd:ee:ff, aa-bb-..., or aabbccddeeff."""
    text = (text or "").strip()
    if not MAC.match(text):
        raise ValueError(f"not a MAC address: {text!r}")
    raw = bytes.fromhex(re.sub(r"[:-]", "", text))
    if raw == b"\x00" * 6 or raw[0] & 1:
        raise ValueError(f"not a unicast MAC address: {text!r}")
    return raw


def magic_packet(mac: bytes) -> bytes:
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes")
    return b"\xff" * 6 + mac * 16


def send(mac: bytes, broadcast: str = "255.255.255.255", ports: tuple[int, ...] = PORTS) -> None:
    """Send the magic packet for `mac` to `broadcast` on each port (OSError when it cannot)."""
    packet = magic_packet(mac)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for port in ports:
            sock.sendto(packet, (broadcast, port))
