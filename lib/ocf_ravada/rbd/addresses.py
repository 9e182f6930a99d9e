"""Ceph client addresses ("entity_addr"): '10.0.0.5:0/3141592653', 'v1:10.0.0.5:0/1', '[fd00::5]:0/7'.

The nonce after the slash is random per librados instance, so one address names exactly one
process (one QEMU); the IP names the node.  A bare-IP entry ('10.0.0.5:0/0') in the OSD
blocklist fences every client from that IP.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .errors import BadDiskSpec


@dataclass(frozen=True)
class ClientAddr:
    ip: str
    port: int
    nonce: int

    @classmethod
    def parse(cls, text: str) -> "ClientAddr":
        raw = text.strip()
        if raw.startswith("[") and "," in raw:           # an addrvec: take the first member
            raw = raw[1:-1].split(",")[0]
        for prefix in ("v1:", "v2:", "any:", "none:"):
            if raw.startswith(prefix):
                raw = raw[len(prefix):]
        try:
            hostport, nonce = raw.rsplit("/", 1)
            if hostport.startswith("["):
                host, port = hostport[1:].split("]:", 1)
            else:
                host, port = hostport.rsplit(":", 1)
            ip = str(ipaddress.ip_address(host))
            return cls(ip, int(port), int(nonce))
        except ValueError as exc:
            raise BadDiskSpec(f"not a Ceph client address: {text!r}") from exc

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}/{self.nonce}"


def whole_node_entry(ip: str) -> str:
    """The blocklist entry that fences every client from `ip` (all ports, all nonces)."""
    return str(ClientAddr(str(ipaddress.ip_address(ip)), 0, 0))
