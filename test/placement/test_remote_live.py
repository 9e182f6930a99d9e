"""Our tools with a REAL pacemaker_remote node: a 2-node corosync/pacemakerd cluster in
private namespaces (minicluster.py) plus one node that runs only pacemaker-remoted, joined
by an ocf:pacemaker:remote connection resource.  ocf:ravada:nodeinfo runs ON the remote node
(its attribute writes go through pacemaker-remoted's proxy), ravada-place sees and places
onto it, ravada-node drains it, shuts it down (connection disabled, node "powered off") and
wakes it (connection enabled once pacemaker-remoted listens again)."""
from __future__ import annotations

import grp
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from lxml import etree

from minicluster import MiniCluster
from placement_helpers import TOOL
from support.stack import require_stack

pytestmark = [pytest.mark.slow, pytest.mark.pacemaker]

TOP = Path(__file__).resolve().parents[2]
NODE_TOOL = TOP / "tools" / "ravada-node"
REMOTE = "rnode1"
SWITCH_ADDR = "10.231.9.100"        # the remote node's address; the full nodes are .1 and .2

# The remote node's namespaces: private /run, /dev/shm, Pacemaker state and logs, our
# agents in place of the installed ones; it waits there (pacemaker-remoted is started, and
# "powered off", from outside by PID).
REMOTE_INIT = r"""
set -eu
root=$1; name=$2
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount --bind "$root/lib" /var/lib/pacemaker
mount --bind "$root/log" /var/log/pacemaker
mount --bind "$root/agents" /usr/lib/ocf/resource.d/ravada
hostname "$name"
ip link set lo up
ip link add br0 type bridge
ip addr add "$3/24" dev br0
ip link set br0 up
touch "$root/ns-ready"
while [ ! -e "$root/stop" ]; do sleep 0.2; done
"""


class RemotePeer:
    """A pacemaker_remote node for a MiniCluster: its own namespaces, a bridge every full
    node is linked to by a veth pair, pacemaker-remoted started and killed by PID."""

    def __init__(self, workdir: Path, name: str, key: Path) -> None:
        self.root = workdir / name
        self.name = name
        self.key = key
        self.holder: subprocess.Popen | None = None
        self.daemon: subprocess.Popen | None = None

    def start(self, cluster: MiniCluster) -> None:
        haclient = grp.getgrnam("haclient").gr_gid
        for sub in ("lib", "log", "agents"):
            (self.root / sub).mkdir(parents=True)
            os.chown(self.root / sub, 0, haclient)
            (self.root / sub).chmod(0o775)
        for agent in ("nodeinfo", "VirtualDomain"):
            (self.root / "agents" / agent).symlink_to(TOP / "agents" / agent)
        script = self.root / "init.sh"
        script.write_text(REMOTE_INIT)
        self.holder = subprocess.Popen(["unshare", "--mount", "--uts", "--net", "--", "/bin/sh", str(script),
                                        str(self.root), self.name, SWITCH_ADDR],
                                       stdout=open(self.root / "init.out", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not (self.root / "ns-ready").exists():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"remote node namespace not ready: {(self.root / 'init.out').read_text()}")
            time.sleep(0.05)
        for number, full in enumerate(cluster.holders):
            port = f"up{number}"
            subprocess.run(["nsenter", "--net", f"--target={full.pid}", "ip", "link", "add", "rem0", "type", "veth",
                            "peer", "name", port, "netns", f"/proc/{self.holder.pid}/ns/net"], check=True)
            subprocess.run(["nsenter", "--net", f"--target={full.pid}", "ip", "addr", "add",
                            f"10.231.9.{number + 1}/24", "dev", "rem0"], check=True)
            subprocess.run(["nsenter", "--net", f"--target={full.pid}", "ip", "link", "set", "rem0", "up"], check=True)
            self.run(["ip", "link", "set", port, "master", "br0"])
            self.run(["ip", "link", "set", port, "up"])
        self.power_on()

    def power_on(self) -> None:
        """Start pacemaker-remoted in the node (nsenter execs it: the PID is the daemon's)."""
        self.daemon = subprocess.Popen(
            ["nsenter", "--mount", "--uts", "--net", f"--target={self.holder.pid}", "--",
             shutil.which("pacemaker-remoted") or "pacemaker-remoted"],
            env=dict(os.environ, PCMK_authkey_location=str(self.key)),
            stdout=open(self.root / "remoted.out", "a"), stderr=subprocess.STDOUT)

    def power_off(self) -> None:
        """Power cut: the daemon dies at once."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)

    def stop(self) -> None:
        self.power_off()
        (self.root / "stop").touch()
        if self.holder is not None:
            try:
                self.holder.wait(10)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait()

    def run(self, argv: list[str], check: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "--mount", "--uts", "--net", f"--target={self.holder.pid}", "--", *argv],
                              capture_output=True, text=True, check=check, timeout=120,
                              env=dict(os.environ, **(env or {})))


def status(cluster: MiniCluster) -> etree._Element:
    return etree.fromstring(cluster.run(["crm_mon", "--output-as=xml", "-1"]).stdout.encode())


def node_entry(cluster: MiniCluster, name: str) -> etree._Element | None:
    return status(cluster).find(f"nodes/node[@name='{name}']")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def remote_online(cluster: MiniCluster) -> bool:
    entry = node_entry(cluster, REMOTE)
    return entry is not None and entry.get("online") == "true"


def cib_tool(cluster: MiniCluster, scope: str, xml: str) -> None:
    cluster.run(["cibadmin", "--create", "--scope", scope, "--xml-text", xml])


@pytest.fixture(scope="module")
def cluster():
    require_stack("a real Pacemaker cluster with a remote node", "corosync", "pacemakerd", "pacemaker-remoted",
                  "cibadmin", "crm_mon", "crm_diff", "unshare", "nsenter", "ip")
    workdir = Path(tempfile.mkdtemp(prefix="ravada-remote-"))
    workdir.chmod(0o755)        # the controller (hacluster) reads the key below
    key = workdir / "authkey"
    key.write_bytes(os.urandom(4096))
    os.chown(key, 0, grp.getgrnam("haclient").gr_gid)
    key.chmod(0o640)
    # The full nodes' daemons inherit the environment: they use this key, not /etc/pacemaker's.
    saved = os.environ.get("PCMK_authkey_location")
    os.environ["PCMK_authkey_location"] = str(key)
    mini = MiniCluster(2, cluster_name="remotetest")
    peer = RemotePeer(workdir, REMOTE, key)
    try:
        mini.start()
        if saved is None:
            os.environ.pop("PCMK_authkey_location")
        else:
            os.environ["PCMK_authkey_location"] = saved
        peer.start(mini)
        cib_tool(mini, "resources",
                 f'<primitive id="{REMOTE}" class="ocf" provider="pacemaker" type="remote">'
                 f'<instance_attributes id="{REMOTE}-ia"><nvpair id="{REMOTE}-server" name="server" '
                 f'value="{SWITCH_ADDR}"/></instance_attributes><operations><op id="{REMOTE}-monitor" '
                 f'name="monitor" interval="5s" timeout="15s"/></operations></primitive>')
        wait_for(lambda: remote_online(mini), 60, f"{REMOTE} online")
        # The proxy to the cluster's daemons is ready a moment after the node shows online.
        wait_for(lambda: peer.run(["crm_node", "-n"], check=False).returncode == 0, 30, "the remote proxy")
        mini.run(["crm_attribute", "--type", "crm_config", "--name", "placement-strategy", "--update", "utilization"])
        mini.run(["crm_attribute", "--type", "rsc_defaults", "--name", "resource-stickiness", "--update", "100"])
        mini.cluster_peer = peer
        yield mini
    finally:
        peer.stop()
        mini.stop()
        if saved is None:
            os.environ.pop("PCMK_authkey_location", None)
        shutil.rmtree(workdir, ignore_errors=True)


def cib(cluster: MiniCluster) -> etree._Element:
    return etree.fromstring(cluster.run(["cibadmin", "--query"]).stdout.encode())


def node_values(cluster: MiniCluster, node: str) -> dict[str, str]:
    """Every attribute Pacemaker holds for the node: permanent, utilization and transient."""
    root = cib(cluster)
    values = {}
    for path in (f"configuration/nodes/node[@uname='{node}']/instance_attributes/nvpair",
                 f"configuration/nodes/node[@uname='{node}']/utilization/nvpair",
                 f"status/node_state[@uname='{node}']/transient_attributes/instance_attributes/nvpair"):
        values.update({nv.get("name"): nv.get("value") for nv in root.iterfind(path)})
    return values


def add_vm(cluster: MiniCluster, name: str, cpu: int, memory: int) -> None:
    cib_tool(cluster, "resources",
             f'<primitive id="{name}" class="ocf" provider="pacemaker" type="Dummy">'
             f'<meta_attributes id="{name}-meta"><nvpair id="{name}-tr" name="target-role" value="Stopped"/>'
             f'<nvpair id="{name}-am" name="allow-migrate" value="true"/></meta_attributes>'
             f'<utilization id="{name}-util"><nvpair id="{name}-cpu" name="cpu" value="{cpu}"/>'
             f'<nvpair id="{name}-mem" name="hv_memory" value="{memory}"/></utilization></primitive>')


def where(cluster: MiniCluster) -> dict[str, str | None]:
    return cluster.resource_nodes()


def test_tools_on_the_remote_node_reach_the_cluster(cluster):
    """crm_node -n names the remote node itself (our agents and ravada-rbd publish-addrs
    rely on it); a permanent attribute set from there lands on the remote node."""
    peer = cluster.cluster_peer
    assert peer.run(["crm_node", "-n"]).stdout.strip() == REMOTE
    peer.run(["crm_attribute", "--node", REMOTE, "--name", "ravada-ceph-addrs", "--update", SWITCH_ADDR])
    root = cib(cluster)
    assert root.find(f"configuration/nodes/node[@uname='{REMOTE}']").get("type") == "remote"
    from ocf_ravada.rbd.nodes import NodeMap
    assert NodeMap.from_cib_xml(root).ips_of(REMOTE) == (SWITCH_ADDR,)


def test_nodeinfo_publishes_from_the_remote_node(cluster):
    """ocf:ravada:nodeinfo, run by pacemaker-remoted ON the remote node, publishes that
    node's utilization and transient attributes through the proxy."""
    cib_tool(cluster, "resources",
             '<primitive id="info-r" class="ocf" provider="ravada" type="nodeinfo">'
             '<instance_attributes id="info-r-ia"><nvpair id="info-r-sp" name="storage_paths" value="/var/lib/pacemaker"/>'
             '</instance_attributes><operations><op id="info-r-mon" name="monitor" interval="5s" timeout="30s"/>'
             '</operations></primitive>')
    cib_tool(cluster, "constraints", f'<rsc_location id="info-r-only-remote" rsc="info-r" node="{REMOTE}" score="INFINITY"/>')
    cib_tool(cluster, "constraints", '<rsc_location id="info-r-not-1" rsc="info-r" node="pnode1" score="-INFINITY"/>')
    cib_tool(cluster, "constraints", '<rsc_location id="info-r-not-2" rsc="info-r" node="pnode2" score="-INFINITY"/>')
    try:
        wait_for(lambda: where(cluster).get("info-r") == REMOTE, 60, "nodeinfo started on the remote node")
        wanted = {"cpu", "hv_memory", "ravada-cpus", "ravada-memory-total", "ravada-storage-free"}
        wait_for(lambda: wanted <= set(node_values(cluster, REMOTE)), 30, "nodeinfo's values on the remote node")
        values = node_values(cluster, REMOTE)
        assert int(values["cpu"]) == int(values["ravada-cpus"]) == os.cpu_count()
        assert int(values["hv_memory"]) > 0
        full = set(node_values(cluster, "pnode1")) | set(node_values(cluster, "pnode2"))
        assert not wanted & full, "published on a full node instead"
        # What the cluster does when the full node hosting the connection dies (seen on
        # Pacemaker 2.1.5): the remote node's transient attributes are purged while nodeinfo
        # keeps running there.  Its next monitor publishes them again.
        transient = [name for name in values if name.startswith("ravada-") and name != "ravada-ceph-addrs"]
        for name in transient:
            cluster.run(["crm_attribute", "--node", REMOTE, "--name", name, "--delete", "--lifetime", "reboot"])
        assert not set(transient) & set(node_values(cluster, REMOTE))
        wait_for(lambda: set(transient) <= set(node_values(cluster, REMOTE)), 30, "nodeinfo's values published again")
    finally:
        cluster.run(["crm_resource", "--resource", "info-r", "--meta", "--set-parameter", "target-role",
                     "--parameter-value", "Stopped"])
        cluster.settle()


def ravada_node(cluster: MiniCluster, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return cluster.run(["/usr/bin/python3", str(NODE_TOOL), *args], check=False, env=env)


def start(cluster: MiniCluster, names: list[str]) -> None:
    for name in names:
        cluster.run(["crm_resource", "--resource", name, "--meta", "--delete-parameter", "target-role"])
    cluster.settle(60)


def test_place_excludes_the_remote_node_in_standby(cluster):
    cluster.run(["crm_attribute", "--node", REMOTE, "--name", "standby", "--update", "on"])
    try:
        wait_for(lambda: node_entry(cluster, REMOTE).get("standby") == "true", 20, "standby seen")
        add_vm(cluster, "rvm-standby", 1, 512)
        out = cluster.run(["/usr/bin/python3", str(TOOL), "place", "--explain", "rvm-standby"], check=False).stdout
        assert f"{REMOTE}" in out and "in standby" in out.split(REMOTE, 1)[1].splitlines()[0], out
    finally:
        cluster.run(["crm_attribute", "--node", REMOTE, "--name", "standby", "--delete"])
        cluster.run(["cibadmin", "--delete", "--xml-text", '<primitive id="rvm-standby"/>'])
        cluster.settle(60)


def test_place_sees_the_remote_node_and_pacemaker_starts_vms_there(cluster):
    """The remote node has the most room: ravada-place, run on the remote node, plans VMs
    onto it, writes its constraints, and Pacemaker starts them there."""
    sizes = {"pnode1": (4, 4096), "pnode2": (4, 4096), REMOTE: (16, 32768)}
    for node, (cpu, memory) in sizes.items():
        for name, value in (("cpu", cpu), ("hv_memory", memory)):
            cluster.run(["crm_attribute", "--node", node, "--utilization", "--name", name, "--update", str(value)])
    vms = ["rvm-a", "rvm-b", "rvm-c"]
    for name in vms:
        add_vm(cluster, name, 2, 2048)
    # Run on the remote node itself: cibadmin, crm_mon and cibadmin --patch through the proxy.
    proc = cluster.cluster_peer.run(["/usr/bin/python3", str(TOOL), "place", "--apply", "--policy", "pack"],
                                    check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    planned = dict(line.split(": ") for line in out.splitlines() if line.startswith("rvm-"))
    assert set(planned.values()) == {REMOTE}, out
    start(cluster, vms)
    assert {vm: where(cluster)[vm] for vm in vms} == planned


def test_drain_then_undrain_the_remote_node(cluster):
    before = where(cluster)
    on_remote = sorted(vm for vm, node in before.items() if vm.startswith("rvm-") and node == REMOTE)
    assert on_remote, before
    proc = ravada_node(cluster, "drain", REMOTE, "--timeout", "120")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cluster.settle(60)
    after = where(cluster)
    assert all(after[vm] not in (None, REMOTE) for vm in on_remote), after
    assert "ravada-drained" in node_values(cluster, REMOTE)
    proc = ravada_node(cluster, "undrain", REMOTE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ravada-drained" not in node_values(cluster, REMOTE)
    assert not [c for c in cib(cluster).iter("rsc_location") if c.get("node") == REMOTE
                and c.get("id", "").startswith("cli-ban-")]


def connection_role(cluster: MiniCluster) -> str | None:
    for nv in cib(cluster).iterfind(f"configuration/resources/primitive[@id='{REMOTE}']/meta_attributes/nvpair"):
        if nv.get("name") == "target-role":
            return nv.get("value")
    return None


def test_shutdown_disables_the_connection_and_wake_brings_the_remote_node_back(cluster):
    """shutdown: drained, connection disabled, node offline and clean (nothing to fence),
    then powered off.  wake: once pacemaker-remoted listens again the connection is enabled
    and the node is online."""
    peer = cluster.cluster_peer
    add_vm(cluster, "rvm-home", 1, 512)
    cluster.run(["cibadmin", "--create", "--scope", "constraints", "--xml-text",
                 f'<rsc_location id="rvm-home-here" rsc="rvm-home" node="{REMOTE}" score="500"/>'])
    start(cluster, ["rvm-home"])
    assert where(cluster)["rvm-home"] == REMOTE
    marker = Path(peer.root) / "powered-off"
    # The node's power switch: records that it was asked, then cuts the daemon.
    switch = Path(peer.root) / "power-off.sh"
    switch.write_text(f"#!/bin/sh\n[ \"$1\" = {REMOTE} ] || exit 1\ntouch {marker}\n"
                      f"kill -KILL {peer.daemon.pid}\n")
    switch.chmod(0o755)
    proc = ravada_node(cluster, "shutdown", REMOTE, "--timeout", "180",
                       env={"RAVADA_NODE_POWEROFF": f"{switch} {{node}}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.exists()
    assert connection_role(cluster) == "Stopped"
    entry = node_entry(cluster, REMOTE)
    assert entry.get("online") == "false" and entry.get("unclean") == "false"
    assert where(cluster)["rvm-home"] not in (None, REMOTE)
    peer.daemon.wait(10)
    cluster.run(["crm_attribute", "--node", REMOTE, "--name", "ravada-mac", "--update", "02:00:0a:e7:09:64"])
    waker = subprocess.Popen(["nsenter", "--mount", "--uts", "--net", f"--target={cluster.holders[0].pid}", "--",
                              "/usr/bin/python3", str(NODE_TOOL), "wake", REMOTE, "--broadcast", "10.231.9.255",
                              "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert waker.poll() is None, waker.stdout.read()
        assert connection_role(cluster) == "Stopped", "enabled before pacemaker-remoted listens"
        peer.power_on()
        out, _ = waker.communicate(timeout=150)
    finally:
        if waker.poll() is None:
            waker.kill()
            waker.wait()
    assert waker.returncode == 0, out
    assert connection_role(cluster) is None
    assert remote_online(cluster)
    proc = ravada_node(cluster, "undrain", REMOTE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
