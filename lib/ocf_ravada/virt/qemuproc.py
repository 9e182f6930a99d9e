"""Find a domain's QEMU process without libvirt (libvirtd down or hung).

Only processes in our own network namespace count: libvirt keeps QEMU in the host's
network namespace, and on a machine hosting several lab nodes this keeps one node from
seeing another node's guests.
"""
from __future__ import annotations

import os

import psutil


def _netns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _guest_name(cmdline: list[str]) -> str | None:
    """The domain name from QEMU's `-name guest=NAME,...` (or plain `-name NAME`)."""
    for flag, value in zip(cmdline, cmdline[1:]):
        if flag == "-name":
            first = value.replace(",,", "\0").split(",")[0].replace("\0", ",")
            return first[len("guest="):] if first.startswith("guest=") else first
    return None


def _uuid(cmdline: list[str]) -> str | None:
    for flag, value in zip(cmdline, cmdline[1:]):
        if flag == "-uuid":
            return value.lower()
    return None


def find(name: str, uuid: str | None = None) -> list[psutil.Process]:
    """QEMU processes running domain `name` (and `uuid`, when known) in our namespace."""
    ours = _netns("self")
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        pname = proc.info["name"] or ""
        cmdline = proc.info["cmdline"] or []
        if not (pname.startswith("qemu") or pname == "kvm"):
            continue
        if _guest_name(cmdline) != name:
            continue
        if uuid and _uuid(cmdline) not in (None, uuid.lower()):
            continue
        if _netns(proc.pid) != ours:
            continue
        found.append(proc)
    return found
