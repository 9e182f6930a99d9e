"""Names, addresses and paths of a lab: everything derived from (lab name, node count)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import LabError

DEFAULT_ROOT = Path("/var/lib/ravada-lab")
DEFAULT_NAME = "lab"
MAX_NODES = 16
SUBNET = ipaddress.IPv4Network("10.99.0.0/24")
BRIDGE = "labbr0"
# The switch's own address: where the nodes' default route points, and what lets the
# controller's Wake-on-LAN listener receive the nodes' broadcasts on the bridge.
SWITCH_ADDRESS = SUBNET.network_address + 254
NODE_IFACE = "eth0"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")

# Host directories every node gets its own copy of (bind-mounted over the host's).
PRIVATE_DIRS = (
    "/etc/corosync",
    "/etc/libvirt",
    "/var/lib/corosync",
    "/var/lib/pacemaker",
    "/var/lib/pcsd",
    "/var/lib/libvirt",
    "/var/log/corosync",
    "/var/log/pacemaker",
    "/var/log/libvirt",
    "/var/cache/libvirt",
    # Each node's own OpenSSH host keys and configuration, and root's home (its ~/.ssh).
    "/etc/ssh",
    "/root",
)


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise LabError(f"invalid lab name {name!r}: use 1-16 of [a-z0-9-], starting with a letter")
    return name


def check_node_count(count: int) -> int:
    if not 1 <= count <= MAX_NODES:
        raise LabError(f"invalid node count {count}: a lab has 1 to {MAX_NODES} nodes")
    return count


@dataclass(frozen=True)
class NodeLayout:
    name: str
    index: int
    address: ipaddress.IPv4Address
    directory: Path

    @property
    def mac(self) -> str:
        """The node's eth0 MAC: fixed like a real NIC's (locally administered), so Wake-on-LAN
        finds it across power cycles."""
        return f"02:00:0a:63:00:{self.index:02x}"

    @property
    def switch_port(self) -> str:
        """The node's cable end on the lab switch (an interface name, at most 15 chars)."""
        return f"p-{self.name}"

    def private_dir(self, target: str) -> Path:
        return self.directory / "fs" / target.strip("/").replace("/", "-")

    @property
    def log_dir(self) -> Path:
        """Daemon stdout/stderr, written by the controller from the host side."""
        return self.directory / "console"


@dataclass(frozen=True)
class LabLayout:
    name: str
    root: Path

    @classmethod
    def for_lab(cls, name: str = DEFAULT_NAME, root: Path = DEFAULT_ROOT) -> "LabLayout":
        return cls(check_name(name), Path(root) / check_name(name))

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def controller_log(self) -> Path:
        return self.root / "controller.log"

    @property
    def shared_dir(self) -> Path:
        """Visible at this same path on every node: the lab's 'shared storage'."""
        return self.root / "shared"

    @property
    def hosts_file(self) -> Path:
        return self.root / "hosts"

    @property
    def authkey(self) -> Path:
        return self.root / "authkey"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def ssh_key(self) -> Path:
        """The lab root key (private; `.pub` beside it), authorised for root on every node and
        visible at this same path inside every node."""
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """Every node's host key under its name and address (also in each node's
        /etc/ssh/ssh_known_hosts and /root/.ssh/known_hosts)."""
        return self.ssh_dir / "known_hosts"

    def node(self, name: str, count: int) -> NodeLayout:
        index = node_index(name)
        if index > count:
            raise LabError(f"no node {name!r} in lab {self.name!r} (it has {count} nodes)")
        return NodeLayout(name, index, SUBNET.network_address + index, self.root / "nodes" / name)

    def nodes(self, count: int) -> list[NodeLayout]:
        return [self.node(f"node{i}", count) for i in range(1, count + 1)]


def node_index(name: str) -> int:
    match = re.fullmatch(r"node([1-9][0-9]?)", name)
    if not match:
        raise LabError(f"invalid node name {name!r}: lab nodes are node1, node2, ...")
    return int(match.group(1))
