"""Reading a lab's recorded state (written only by its controller) from the host side."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .errors import LabError
from .layout import LabLayout
from .node import NODE_ENV, enter_command
from .shaping import parse_rate


@dataclass(frozen=True)
class LabState:
    lab: LabLayout
    data: dict

    @classmethod
    def load(cls, lab: LabLayout) -> "LabState":
        try:
            return cls(lab, json.loads(lab.state_file.read_text()))
        except FileNotFoundError:
            raise LabError(f"lab {lab.name!r} is not up (no {lab.state_file})") from None

    @property
    def node_names(self) -> list[str]:
        return list(self.data["nodes"])

    @property
    def full_nodes(self) -> list[str]:
        """Cluster nodes running corosync and pacemakerd (node1, node2, ...)."""
        return [n for n, info in self.data["nodes"].items() if info.get("kind") != "remote"]

    @property
    def remote_nodes(self) -> list[str]:
        """pacemaker_remote nodes (remote1, ...), each connected by a resource of its name."""
        return [n for n, info in self.data["nodes"].items() if info.get("kind") == "remote"]

    def info(self, node: str) -> dict:
        info = self.data["nodes"].get(node)
        if info is None:
            raise LabError(f"no node {node!r} in lab {self.lab.name!r}; "
                           f"nodes: {', '.join(self.node_names)}")
        return info

    def address(self, node: str) -> str:
        """The node's address on the lab network (its sshd, libvirtd, corosync listen there)."""
        return self.info(node)["address"]

    @property
    def ssh_key(self) -> Path:
        """The lab root key, authorised for root on every node; same path inside every node."""
        return self.lab.ssh_key

    @property
    def known_hosts(self) -> Path:
        """Every node's host key under its name and address; same path inside every node."""
        return self.lab.known_hosts

    @property
    def link_rate(self) -> str | None:
        """The rate every node's link is limited to each way (as given, e.g. 200mbit)."""
        return self.data.get("link_rate")

    @property
    def link_rate_bits(self) -> int | None:
        rate = self.link_rate
        return None if rate is None else parse_rate(rate)

    def holder(self, node: str) -> int:
        holder = self.info(node).get("holder")
        if holder is None or not procs.alive(holder):
            raise LabError(f"{node} is powered off")
        return holder

    def powered_nodes(self) -> list[str]:
        return [n for n, info in self.data["nodes"].items()
                if info.get("holder") and procs.alive(info["holder"])]

    def healthy_nodes(self) -> list[str]:
        """Powered, not frozen, not cut off: nodes whose view of the cluster can be trusted."""
        return [n for n in self.powered_nodes()
                if not self.data["nodes"][n].get("frozen") and not self.data["nodes"][n].get("cut")]


def node_run(state: LabState, node: str, argv: list[str], timeout: float = 60.0,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run a command inside a node; capture its output as text."""
    try:
        result = subprocess.run(enter_command(state.holder(node)) + argv, env=NODE_ENV,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"{node}: {' '.join(argv)} did not finish within {timeout:.0f}s") from None
    if check and result.returncode:
        raise LabError(f"{node}: {' '.join(argv)} failed (rc {result.returncode}): "
                       f"{(result.stderr or result.stdout).strip()}")
    return result
