"""pacemaker_remote nodes in the lab, and our agents and tools on them, in one lab of 3 full
+ 2 remote nodes: the remote nodes join without corosync; ocf:ravada:VirtualDomain starts a
VM on a remote node and live-migrates it remote -> remote and remote -> full (its
utilization written from the remote node); ocf:ravada:nodeinfo publishes from remote nodes;
ravada-place places onto a remote node; ravada-node drains one, shuts it down (connection
disabled, nothing fenced) and wakes it with a magic packet; a killed remote node is fenced
and its VM restarted elsewhere; a remote node cut off the network is fenced before its VM
starts elsewhere (QEMU never on two nodes); a full node hosting a remote connection dies and
the connection moves without restarting the remote node's VM; last, the UPS emergency
shutdown stops the VMs and powers the remote nodes off too."""

import time

import libvirt
import pytest
from lxml import etree

from ravada_lab import vms
from ravada_lab.domains import write_domain

from lab_support import SESSION, QemuWatch, domain_state, running_lab

pytestmark = pytest.mark.lab

REMOTES = ["remote1", "remote2"]
FULL = ["node1", "node2", "node3"]


@pytest.fixture(scope="module")
def rlab(installed, request):
    with running_lab(f"e2e-{SESSION}-rv", request, len(FULL), len(REMOTES)) as lab:
        lab.settle()
        yield lab


def qemu_pid(lab, node: str, vm: str) -> int:
    conn = vms.libvirt_connection(lab.state(), node)
    try:
        return int(etree.fromstring(conn.lookupByName(vm).XMLDesc(0).encode()).get("id"))
    finally:
        conn.close()


def assert_arrived_live(lab, watch: QemuWatch, vm: str, source: str, target: str) -> None:
    seen = watch.nodes_of(vm)
    assert seen and all(seen), f"{vm} had no QEMU process anywhere at some point: it stopped"
    assert sorted([source, target]) in seen, f"{vm} never had QEMU on {source} and {target}"
    assert seen[-1] == [target], f"{vm} QEMU ends on {seen[-1]}, expected only {target}"
    assert domain_state(lab, target, vm) == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED)


def assert_never_twice(watch: QemuWatch, vm: str) -> None:
    doubled = [nodes for nodes in watch.nodes_of(vm) if len(nodes) > 1]
    assert not doubled, f"{vm} had QEMU processes on several nodes at once: {doubled[:3]}"


def create_disabled(lab, name: str, *meta: str) -> None:
    config = write_domain(lab.layout, name)
    lab.run(FULL[0], *vms.create_argv(name, config, meta=("allow-migrate=true", *meta)), "--disabled")


def enable_on(lab, name: str, node: str, score: str) -> None:
    """Start disabled VM `name` where a location preference of `score` puts it."""
    lab.pcs("constraint", "location", name, "prefers", f"{node}={score}")
    lab.pcs("resource", "enable", name)
    assert lab.wait_started(name) == node


def cib(lab) -> etree._Element:
    return etree.fromstring(lab.run(FULL[0], "cibadmin", "--query").stdout.encode())


def utilization_of(lab, resource: str) -> dict[str, str]:
    return {nv.get("name"): nv.get("value") for nv in
            cib(lab).iterfind(f"configuration/resources//primitive[@id='{resource}']/utilization/nvpair")}


def node_values(lab, node: str) -> dict[str, str]:
    root = cib(lab)
    values = {}
    for path in (f"configuration/nodes/node[@uname='{node}']/utilization/nvpair",
                 f"configuration/nodes/node[@uname='{node}']/instance_attributes/nvpair",
                 f"status/node_state[@uname='{node}']/transient_attributes/instance_attributes/nvpair"):
        values.update({nv.get("name"): nv.get("value") for nv in root.iterfind(path)})
    return values


def test_remote_nodes_join_without_corosync(rlab):
    lab = rlab
    state = lab.state()
    assert state.full_nodes == ["node1", "node2", "node3"] and state.remote_nodes == REMOTES
    view = lab.view()
    assert view.remote == set(REMOTES) and set(REMOTES) <= view.online
    for node in REMOTES:
        assert set(state.info(node)["daemons"]) == {"virtlogd", "libvirtd", "sshd",
                                                    "pacemaker-remoted"}
        # The connection is a resource named like the node, run by a full node.
        assert view.roles[node] == "Started" and view.resources[node][0] in state.full_nodes
    # From inside a remote node the cluster is reachable through pacemaker-remoted.
    lab.run("remote1", "crm_attribute", "--node", "remote1", "--name", "lab-remote-test",
            "--update", "yes")
    assert lab.run("node1", "crm_attribute", "--node", "remote1", "--name", "lab-remote-test",
                   "--query", "--quiet").stdout.strip() == "yes"
    # ssh with verified keys reaches remote nodes too.
    assert lab.ssh("node1", "remote2", "hostname").stdout.strip() == "remote2"


def test_vm_on_a_killed_remote_node_is_fenced_and_restarted(rlab):
    lab = rlab
    config = write_domain(lab.layout, "vmremote")
    lab.run("node1", *vms.create_argv("vmremote", config), "--disabled")
    lab.pcs("constraint", "location", "vmremote", "prefers", "remote1=50")
    try:
        lab.pcs("resource", "enable", "vmremote")
        assert lab.wait_started("vmremote") == "remote1"
        assert vms.qemu_nodes(lab.state()).get("vmremote") == ["remote1"]
        since = time.time()
        lab.cli("kill", "remote1")
        elsewhere = lab.wait_started("vmremote", not_on=("remote1",))
        assert vms.qemu_nodes(lab.state()).get("vmremote") == [elsewhere]
        # Fenced by the agent (not only powered on by someone), then back with the cluster.
        lab.wait(lambda _v: lab.power_ops("remote1", since), "remote1 fenced by fence_ravada_lab")
        lab.settle()
        assert "remote1" in lab.view().online
        assert "pacemaker-remoted" in lab.state().info("remote1")["daemons"]
    finally:
        lab.delete_vm("vmremote")


def test_vm_on_a_remote_node_live_migrates_to_remote_and_full_nodes(rlab):
    lab = rlab
    create_disabled(lab, "vmrem")
    try:
        assert utilization_of(lab, "vmrem") == {}
        enable_on(lab, "vmrem", "remote1", "INFINITY")
        assert vms.qemu_nodes(lab.state()).get("vmrem") == ["remote1"]
        # Written by the agent's start on remote1, through pacemaker-remoted's proxy.
        lab.wait(lambda _v: {"cpu", "hv_memory"} <= set(utilization_of(lab, "vmrem")),
                 "vmrem's utilization set from remote1", timeout=30)
        lab.pcs("constraint", "delete", "location-vmrem-remote1-INFINITY")
        for source, target in (("remote1", "remote2"), ("remote2", "node2")):
            with QemuWatch(lab) as watch:
                lab.pcs("resource", "move", "vmrem", target)
                assert lab.wait_started("vmrem", not_on=(source,)) == target
            lab.pcs("resource", "clear", "vmrem")
            assert_arrived_live(lab, watch, "vmrem", source, target)
    finally:
        lab.delete_vm("vmrem")


def test_nodeinfo_on_remote_nodes_and_place_onto_one(rlab):
    """The nodeinfo clone runs on every node, remote ones included, and publishes there;
    ravada-place puts a VM whose base only remote2 holds on remote2, and Pacemaker starts it
    there."""
    lab = rlab
    lab.pcs("resource", "create", "info", "ocf:ravada:nodeinfo", "clone")
    create_disabled(lab, "vmbase", "ravada-base=b1")
    try:
        wanted = {"cpu", "hv_memory", "host_memory", "ravada-cpus", "ravada-memory-total"}
        lab.wait(lambda _v: all(wanted <= set(node_values(lab, n)) for n in FULL + REMOTES),
                 "nodeinfo's values on every node", timeout=90)
        lab.run(FULL[0], "crm_attribute", "--node", "remote2", "--name", "ravada-base-b1", "--update", "1")
        lab.run(FULL[0], "crm_attribute", "--type", "crm_config", "--name", "placement-strategy",
                "--update", "utilization")
        explained = lab.run(FULL[0], "ravada-place", "place", "--explain", "vmbase").stdout
        for node in REMOTES:
            assert node in explained, explained
        out = lab.run(FULL[0], "ravada-place", "place", "--apply", "vmbase").stdout
        assert "vmbase: remote2" in out, out
        lab.pcs("resource", "enable", "vmbase")
        assert lab.wait_started("vmbase") == "remote2"
        assert vms.qemu_nodes(lab.state()).get("vmbase") == ["remote2"]
    finally:
        lab.run(FULL[0], "ravada-place", "clear", check=False)
        lab.delete_vm("vmbase")
        lab.pcs("resource", "delete", "info")
        lab.run(FULL[0], "crm_attribute", "--node", "remote2", "--name", "ravada-base-b1", "--delete")
        lab.run(FULL[0], "crm_attribute", "--type", "crm_config", "--name", "placement-strategy", "--delete")


def test_drain_a_remote_node_by_live_migration(rlab):
    lab = rlab
    create_disabled(lab, "vmdrain")
    try:
        enable_on(lab, "vmdrain", "remote2", "100")
        with QemuWatch(lab) as watch:
            done = lab.run(FULL[0], "ravada-node", "drain", "remote2", "--timeout", "120")
            target = lab.wait_started("vmdrain", not_on=("remote2",))
        assert "vmdrain: moved to" in done.stdout, done.stdout
        assert_arrived_live(lab, watch, "vmdrain", "remote2", target)
        assert "ravada-drained" in node_values(lab, "remote2")
        lab.run(FULL[0], "ravada-node", "undrain", "remote2")
        assert "ravada-drained" not in node_values(lab, "remote2")
    finally:
        lab.delete_vm("vmdrain")


def test_cut_remote_node_is_fenced_before_its_vm_runs_elsewhere(rlab):
    lab = rlab
    create_disabled(lab, "vmcut")
    try:
        enable_on(lab, "vmcut", "remote1", "100")
        lab.pcs("constraint", "delete", "location-vmcut-remote1-100")
        with QemuWatch(lab) as watch:
            wall = time.time()
            lab.cli("cut", "remote1")
            survivor = lab.wait_started("vmcut", not_on=("remote1",))
            lab.settle()
        assert lab.power_ops("remote1", wall), "remote1 was not power-cycled by fence_ravada_lab"
        assert [e for e in lab.fence_events("remote1") if e.get("status") == "success"]
        assert_never_twice(watch, "vmcut")
        assert vms.qemu_nodes(lab.state()).get("vmcut") == [survivor]
        assert not lab.state().data["nodes"]["remote1"]["cut"]
    finally:
        lab.settle()
        lab.delete_vm("vmcut")


def test_full_node_hosting_a_connection_dies_and_the_vm_keeps_running(rlab):
    lab = rlab
    create_disabled(lab, "vmkeep")
    try:
        enable_on(lab, "vmkeep", "remote2", "INFINITY")
        host = lab.view().resources["remote2"][0]
        assert host in FULL
        pid = qemu_pid(lab, "remote2", "vmkeep")
        with QemuWatch(lab) as watch:
            wall = time.time()
            lab.cli("kill", host)
            lab.wait(lambda v: v.roles.get("remote2") == "Started" and v.resources["remote2"][0] not in (host,)
                     and host not in v.online, f"remote2's connection moved off {host}")
            lab.settle()
        assert lab.power_ops(host, wall), f"{host} was not fenced"
        assert not lab.power_ops("remote2", wall), "remote2 was fenced although only its connection host died"
        assert set(tuple(nodes) for nodes in watch.nodes_of("vmkeep")) == {("remote2",)}
        assert qemu_pid(lab, "remote2", "vmkeep") == pid
        assert domain_state(lab, "remote2", "vmkeep") == (libvirt.VIR_DOMAIN_RUNNING,
                                                         libvirt.VIR_DOMAIN_RUNNING_BOOTED)
    finally:
        lab.settle()
        lab.delete_vm("vmkeep")


def test_shutdown_and_wake_a_remote_node(rlab):
    """ravada-node shutdown of a remote node running a VM: the VM moves live, the connection
    is disabled, the node is offline and clean (nothing fenced), then powered off; ravada-node
    wake sends the magic packet that powers it on, enables the connection once
    pacemaker-remoted listens, and the node is online again."""
    lab = rlab
    create_disabled(lab, "vmhome")
    try:
        enable_on(lab, "vmhome", "remote2", "100")
        fenced_before = len(lab.fence_events("remote2"))
        poweroff = f"RAVADA_NODE_POWEROFF=fence_ravada_lab --lab={lab.name} --action=off --plug={{node}}"
        with QemuWatch(lab) as watch:
            done = lab.run(FULL[0], "env", poweroff, "ravada-node", "shutdown", "remote2", "--timeout", "300",
                           timeout=330)
            target = lab.wait_started("vmhome", not_on=("remote2",))
        assert_arrived_live(lab, watch, "vmhome", "remote2", target)
        assert "remote2" not in lab.state().powered_nodes(), done.stdout
        view = lab.view()
        assert "remote2" not in view.online and "remote2" not in view.unclean
        assert view.roles.get("remote2") == "Stopped", "the connection is disabled"
        assert len(lab.fence_events("remote2")) == fenced_before, "a clean shutdown must not be fenced"

        woke = lab.run(FULL[0], "ravada-node", "wake", "remote2", "--timeout", "300", timeout=330)
        assert "remote2 is online" in woke.stdout, woke.stdout
        lab.wait(lambda v: v.settled(FULL + REMOTES), "remote2 back online")
        # The magic packet powered it on, nothing else.
        wakes = [e for e in lab.state().data["power_log"] if e["node"] == "remote2" and e["op"] == "on"]
        assert wakes[-1]["client"].startswith("wake-on-lan from "), wakes[-3:]
        assert len(lab.fence_events("remote2")) == fenced_before
    finally:
        if "remote2" not in lab.state().powered_nodes():     # failed before the wake
            lab.cli("on", "remote2", check=False)
            lab.pcs("resource", "enable", "remote2")
        lab.run(FULL[0], "ravada-node", "undrain", "remote2", check=False)
        lab.settle()
        lab.delete_vm("vmhome")


def test_emergency_shutdown_powers_off_remote_nodes_too(rlab):
    """The UPS emergency shutdown with remote nodes (last: the cluster stays down): every VM,
    one on a remote node among them, is stopped within the deadline and none restarted
    elsewhere; the stack stops on the full nodes; every node, remote ones first, is powered
    off through the configured power switch."""
    lab = rlab
    for name, node in (("vmups-r", "remote1"), ("vmups-f", "node2")):
        create_disabled(lab, name)
        lab.pcs("constraint", "location", name, "prefers", f"{node}=100")
        lab.pcs("resource", "enable", name)
    for name, node in (("vmups-r", "remote1"), ("vmups-f", "node2")):
        assert lab.wait_started(name) == node
    wall = time.time()
    shell = f"RAVADA_NODE_SHELL=ravada-lab --name {lab.name} ssh {{node}}"
    poweroff = f"RAVADA_NODE_POWEROFF=fence_ravada_lab --lab={lab.name} --action=off --plug={{node}}"
    with QemuWatch(lab) as watch:
        done = lab.run(FULL[0], "env", shell, poweroff, "ravada-cluster", "emergency-shutdown", "--poweroff",
                       "--deadline", "180", check=False, timeout=240)
    # Run from node1, it ends killed when node1 goes off last: its log tells.
    log = done.stdout + done.stderr
    assert "every VM is stopped" in log, log
    for name in ("vmups-r", "vmups-f"):
        assert_never_twice(watch, name)
    # The command dies with node1, possibly before node1's power-off has completed.
    ends = time.monotonic() + 30
    while lab.state().powered_nodes() and time.monotonic() < ends:
        time.sleep(0.5)
    assert lab.state().powered_nodes() == [], log
    offs = {e["node"]: e["at"] for e in lab.state().data["power_log"]
            if e["op"] == "off" and e["at"] >= wall}
    assert set(offs) == set(FULL + REMOTES), offs
    assert max(offs[n] for n in REMOTES) <= min(offs[n] for n in FULL), "remote nodes go off first"
    for node in FULL:
        assert f"{node}: pacemaker stopped" in log and f"{node}: corosync stopped" in log, log
