"""Node-wide storage fencing: cut every Ceph client of a node off the OSDs by IP.

A bare-IP blocklist entry ('10.0.0.11:0/0') makes the OSDs refuse all clients from that IP,
including ones started later, until the entry is removed ("unfencing").  Adding needs
mon 'profile rbd' (or more); removing needs an admin-like key ('osd blocklist rm').
"""
from __future__ import annotations

from .addresses import whole_node_entry
from .cluster import LONG_BLOCKLIST_SECONDS, CephSession


def fence_ips(session: CephSession, ips: tuple[str, ...], expire: float = LONG_BLOCKLIST_SECONDS) -> list[str]:
    entries = [whole_node_entry(ip) for ip in ips]
    for entry in entries:
        session.blocklist_add(entry, expire)
    return entries


def unfence_ips(session: CephSession, ips: tuple[str, ...]) -> list[str]:
    listed = {e.addr for e in session.blocklist_ls()}
    removed = []
    for entry in (whole_node_entry(ip) for ip in ips):
        if entry in listed:
            session.blocklist_rm(entry)
            removed.append(entry)
    return removed


def fenced_ips(session: CephSession, ips: tuple[str, ...]) -> list[str]:
    """Which of `ips` are fenced as a whole (bare-IP entry present)."""
    listed = {e.addr for e in session.blocklist_ls()}
    return [ip for ip in ips if whole_node_entry(ip) in listed]
