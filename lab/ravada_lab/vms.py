"""Lab VMs as Pacemaker resources, and where their QEMU processes really run.

Shared by `make demo`, the end-to-end tests and the failover benchmark.
"""

from __future__ import annotations

from pathlib import Path

import libvirt

from . import procs
from .domains import write_domain
from .state import LabState, node_run

AGENT = "ocf:ravada:VirtualDomain"


def create_vm(state: LabState, name: str, via: str | None = None, agent: str = AGENT,
              extra: tuple[str, ...] = (), config: Path | None = None) -> list[str]:
    """`pcs resource create` (no --force: pcs validates) of a domain whose XML is `config`
    (default: the lab's tiny domain, written to the shared dir); returns the pcs command."""
    config = config or write_domain(state.lab, name)
    node = via or state.healthy_nodes()[0]
    argv = create_argv(name, config, agent, extra)
    node_run(state, node, argv)
    return argv


def create_argv(name: str, config: Path, agent: str = AGENT, extra: tuple[str, ...] = (),
                meta: tuple[str, ...] = ("allow-migrate=true",)) -> list[str]:
    # tcp: the lab's libvirtd listen unauthenticated on the lab network only (no TLS PKI);
    # force_stop: a disk-less guest has no OS to honour an ACPI shutdown.
    return ["pcs", "resource", "create", name, agent, f"config={config}",
            "migration_transport=tcp", "force_stop=true", *extra, "meta", *meta]


def qemu_nodes(state: LabState) -> dict[str, list[str]]:
    """VM name -> lab nodes where a QEMU process of that guest exists (running or stopped)."""
    found: dict[str, list[str]] = {}
    for node, info in state.data["nodes"].items():
        if not info.get("netns"):
            continue
        ns = procs.NamespaceIds(info["netns"], info["pidns"])
        for pid in procs.members(ns):
            if not procs.command_name(pid).startswith("qemu-system"):
                continue
            guest = _guest_name(pid)
            if guest:
                found.setdefault(guest, []).append(node)
    return found


def _guest_name(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    for flag, value in zip(argv, argv[1:]):
        if flag == b"-name":
            for part in value.decode().split(","):
                if part.startswith("guest="):
                    return part[len("guest="):]
    return None


def libvirt_connection(state: LabState, node: str) -> libvirt.virConnect:
    """The node's own libvirtd, reached from the host through the node's private /run."""
    socket = f"/proc/{state.holder(node)}/root/run/libvirt/libvirt-sock"
    return libvirt.open(f"qemu:///system?socket={socket}")
