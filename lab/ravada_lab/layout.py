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
# pacemaker_remote nodes (remote1, remote2, ...): no corosync, so past corosync's limits.
MAX_REMOTE_NODES = 32
# Remote node K has address .(REMOTE_BASE + K): clear of the full nodes' .1-.16, the Ceph
# host's .250 and the switch's .254.
REMOTE_BASE = 100
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
    # Pacemaker's authkey: the TLS key between the cluster and its remote nodes.
    "/etc/pacemaker",
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


def check_remote_count(count: int) -> int:
    if not 0 <= count <= MAX_REMOTE_NODES:
        raise LabError(f"invalid remote node count {count}: a lab has 0 to {MAX_REMOTE_NODES} "
                       "remote nodes")
    return count


@dataclass(frozen=True)
class NodeLayout:
    name: str
    index: int
    address: ipaddress.IPv4Address
    directory: Path
    # A pacemaker_remote node: pacemaker-remoted instead of corosync + pacemakerd.
    remote: bool = False

    @property
    def mac(self) -> str:
        """The node's eth0 MAC: fixed like a real NIC's (locally administered), so Wake-on-LAN
        finds it across power cycles."""
        return f"02:00:0a:63:00:{int(self.address) & 0xff:02x}"

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

    def node(self, name: str, count: int, remote_count: int = 0) -> NodeLayout:
        remote = name.startswith("remote")
        index = remote_index(name) if remote else node_index(name)
        if index > (remote_count if remote else count):
            raise LabError(f"no node {name!r} in lab {self.name!r} (it has {count} nodes and "
                           f"{remote_count} remote nodes)")
        address = SUBNET.network_address + index + (REMOTE_BASE if remote else 0)
        return NodeLayout(name, index, address, self.root / "nodes" / name, remote)

    def nodes(self, count: int) -> list[NodeLayout]:
        """The full cluster nodes node1..nodeN."""
        return [self.node(f"node{i}", count) for i in range(1, count + 1)]

    def remote_nodes(self, count: int) -> list[NodeLayout]:
        """The pacemaker_remote nodes remote1..remoteN."""
        return [self.node(f"remote{i}", 0, count) for i in range(1, count + 1)]

    @property
    def pacemaker_authkey(self) -> Path:
        """Copied to every node's /etc/pacemaker/authkey (cluster <-> remote nodes' TLS)."""
        return self.root / "pacemaker-authkey"


def node_index(name: str) -> int:
    match = re.fullmatch(r"node([1-9][0-9]?)", name)
    if not match:
        raise LabError(f"invalid node name {name!r}: lab nodes are node1, node2, ...")
    return int(match.group(1))


def remote_index(name: str) -> int:
    match = re.fullmatch(r"remote([1-9][0-9]?)", name)
    if not match:
        raise LabError(f"invalid remote node name {name!r}: remote nodes are remote1, remote2, ...")
    return int(match.group(1))
