"""ravada-node drain/undrain on a simulated cluster (a CIB file whose transitions crm_simulate
runs, live migrations included), refusals through the real command, Wake-on-LAN packets
caught by a real UDP socket.  The lab test (test/e2e/test_lab_ops.py) does it on real nodes."""
import os
import socket
import subprocess

import pytest

from ocf_ravada import nodeops, wol
from ocf_ravada.deadline import Deadline
from support.simcluster import SimCluster
from support.stack import require_stack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "ravada-node")


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    require_stack("a simulated cluster", "crm_simulate", "crm_mon", "cibadmin", "crm_resource")
    sim = SimCluster(tmp_path, {"node1": (8, 16384), "node2": (8, 16384), "node3": (8, 16384)})
    for number in range(6):
        sim.add_vm(f"vm{number}", memory=2048)
    sim.start()
    monkeypatch.setenv("CIB_file", str(sim.path))
    monkeypatch.setattr(nodeops, "POLL", 0.2)
    return sim


def test_drain_in_a_cluster_without_utilization_moves_every_vm(tmp_path, monkeypatch):
    """No node publishes utilization and no placement-strategy (a plain cluster): capacity is
    unknown, Pacemaker places by scores alone, and so does the drain."""
    require_stack("a simulated cluster", "crm_simulate", "crm_mon", "cibadmin", "crm_resource")
    sim = SimCluster(tmp_path, {"node1": None, "node2": None, "node3": None}, placement_strategy="default")
    for number in range(4):
        sim.add_vm(f"vm{number}", memory=2048)
    sim.start()
    monkeypatch.setenv("CIB_file", str(sim.path))
    monkeypatch.setattr(nodeops, "POLL", 0.2)
    node = busiest(sim)
    report = nodeops.drain(node, Deadline(60), log=lambda _line: None, tick=sim.settle)
    assert report.complete and report.moved, report.lines()
    where = sim.where()
    assert all(node not in where[f"vm{n}"] and len(where[f"vm{n}"]) == 1 for n in range(4)), where


def busiest(sim: SimCluster) -> str:
    where = sim.where()
    counts = {n: sum(1 for vm, nodes in where.items() if vm.startswith("vm") and n in nodes) for n in sim.nodes}
    return max(counts, key=counts.get)


def run_tool(sim: SimCluster, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/python3", TOOL, *argv], capture_output=True, text=True, env=sim.env,
                          timeout=120)


def test_drain_live_migrates_every_vm_off_and_undrain_lets_them_back(cluster):
    node = busiest(cluster)
    on_node = sorted(vm for vm, nodes in cluster.where().items() if node in nodes and vm.startswith("vm"))
    assert on_node
    lines = []
    report = nodeops.drain(node, Deadline(60), log=lines.append, tick=cluster.settle)
    assert report.complete, report.lines()
    assert sorted(report.moved) == on_node
    where = cluster.where()
    assert all(node not in where[vm] for vm in where if vm.startswith("vm"))
    assert all(len(where[f"vm{n}"]) == 1 for n in range(6))     # all six still run, once
    cib = cluster.cib()
    bans = {loc.get("rsc") for loc in cib.iter("rsc_location") if loc.get("id", "").startswith("cli-ban-")
            and loc.get("node") == node}
    assert bans == {f"vm{n}" for n in range(6)}       # the others may not come here either
    assert not [loc for loc in cib.iter("rsc_location") if loc.get("id", "").startswith("cli-prefer-")]
    assert cib.xpath("//node[@uname=$n]//nvpair[@name='ravada-drained']", n=node)
    # The plan the moves followed is ravada-place's.
    assert any(line.startswith("plan: ") for line in lines)
    # The transition migrated them live: migrate_to on the drained node, migrate_from where
    # each one runs now.
    for vm in on_node:
        history = {state.get("uname"): [op.get("operation") for op in state.iterfind(
            f"lrm/lrm_resources/lrm_resource[@id='{vm}']/lrm_rsc_op")] for state in cib.iter("node_state")}
        assert "migrate_to" in history[node], history
        assert "migrate_from" in history[where[vm][0]], history

    cleared = nodeops.undrain(node, Deadline(60), log=lines.append)
    assert sorted(cleared) == [f"vm{n}" for n in range(6)]
    cib = cluster.cib()
    assert not [loc for loc in cib.iter("rsc_location") if loc.get("id", "").startswith("cli-ban-")]
    assert not cib.xpath("//nvpair[@name='ravada-drained']")


def test_drain_reports_a_vm_that_could_not_move_and_why(cluster):
    """Its live migration fails and so does every start elsewhere (failures injected into
    each simulated transition): reported as not moved, with Pacemaker's failure."""
    node = busiest(cluster)
    vm = next(vm for vm, nodes in cluster.where().items() if node in nodes and vm.startswith("vm"))
    fails = [f"--op-fail {vm}_migrate_to_0@{node}=1"]
    for other in cluster.nodes:
        if other != node:
            fails += [f"--op-fail {vm}_migrate_from_0@{other}=1", f"--op-fail {vm}_start_0@{other}=1"]
    report = nodeops.drain(node, Deadline(8), log=lambda _l: None, tick=lambda: cluster.settle(*fails))
    assert not report.complete
    assert vm in report.not_moved and vm not in report.moved
    assert "failed" in report.not_moved[vm], report.not_moved
    assert f"{vm}: NOT moved" in "\n".join(report.lines())


def test_drain_whose_deadline_runs_out_while_looking_reports_instead_of_failing(cluster, monkeypatch):
    """crm_mon cut short by the deadline (a loaded node, a slow CIB) ends the wait with the
    report of what did not move, not with an exception."""
    node = busiest(cluster)
    real_status, looks = nodeops.pacemaker.cluster_status, []

    def status_then_timeout(deadline):
        looks.append(deadline)
        if len(looks) > 1:
            raise nodeops.pacemaker.ToolTimeout("crm_mon did not answer within 0.1s")
        return real_status(deadline)

    monkeypatch.setattr(nodeops.pacemaker, "cluster_status", status_then_timeout)
    report = nodeops.drain(node, Deadline(30), log=lambda _l: None)   # nothing settles: no tick
    assert not report.complete
    assert report.not_moved and all("when time ran out" in why for why in report.not_moved.values())


def test_drain_refuses_when_a_vm_has_nowhere_to_go(cluster):
    # Two fillers take most of two nodes; big then fits only on the third.
    cluster.add_vm("filler1", memory=9000)
    cluster.add_vm("filler2", memory=9000)
    cluster.settle()
    cluster.add_vm("big", memory=12000)
    cluster.settle()
    node = cluster.where()["big"][0]
    before = cluster.path.read_bytes()
    done = run_tool(cluster, "drain", node, "--timeout", "30")
    assert done.returncode == 3, done.stderr
    assert "big" in done.stderr and "--force" in done.stderr
    assert cluster.path.read_bytes() == before       # nothing changed


def test_drain_refuses_the_last_node_unless_forced(cluster):
    cluster.settle("--node-down node2", "--node-down node3")
    done = run_tool(cluster, "drain", "node1", "--timeout", "30")
    assert done.returncode == 3
    assert "last node" in done.stderr
    report = nodeops.drain("node1", Deadline(60), force=True, log=lambda _l: None, tick=cluster.settle)
    assert sorted(report.stopped) == [f"vm{n}" for n in range(6)]
    assert not [vm for vm in cluster.where() if vm.startswith("vm")]


def test_drain_dry_run_changes_nothing(cluster):
    node = busiest(cluster)
    before = cluster.path.read_bytes()
    done = run_tool(cluster, "drain", node, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "plan: vm" in done.stdout
    assert cluster.path.read_bytes() == before


@pytest.mark.parametrize("argv", [["drain"], ["drain", "node1", "--timeout", "inf"], ["explode", "node1"],
                                  ["wake", "node1", "--timeout", "-1"]])
def test_usage_errors(argv):
    done = subprocess.run(["/usr/bin/python3", TOOL, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_node_is_an_error(cluster):
    done = run_tool(cluster, "drain", "node9")
    assert done.returncode == 1 and "node9" in done.stderr


def test_magic_packet_layout():
    mac = wol.parse_mac("52:54:00:ab:CD:ef")
    packet = wol.magic_packet(mac)
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:] == bytes.fromhex("525400abcdef") * 16
    for bad in ("52:54:00:ab:cd", "01:00:5e:00:00:01", "00:00:00:00:00:00", "52:54:00:ab:cd:zz", "52:54-00:ab:cd:ef"):
        with pytest.raises(ValueError):
            wol.parse_mac(bad)


def test_wake_sends_the_packet_for_the_recorded_mac_and_waits(cluster, monkeypatch):
    """The packet really leaves on UDP (caught by a socket on a private port pair), and wake
    returns once the node is online again."""
    cluster.settle("--node-down node3")
    subprocess.run(["crm_attribute", "--node", "node3", "--name", "ravada-mac", "--update", "52:54:00:00:00:03"],
                   env=cluster.env, check=True, capture_output=True)
    receivers = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        receivers.append(sock)
    ports = tuple(s.getsockname()[1] for s in receivers)
    real_send = wol.send
    monkeypatch.setattr(wol, "send", lambda mac, broadcast: real_send(mac, "127.0.0.1", ports))
    polls = []

    def node_boots():
        polls.append(1)
        if len(polls) == 2:
            cluster.settle("--node-up node3")

    monkeypatch.setattr(nodeops, "wait_online",
                        _with_tick(nodeops.wait_online, node_boots))
    assert nodeops.wake("node3", Deadline(30), log=lambda _l: None)
    for sock in receivers:
        data = sock.recv(200)
        assert data == b"\xff" * 6 + bytes.fromhex("525400000003") * 16
        sock.close()


def _with_tick(wait_online, tick):
    def wrapped(node, online, deadline, between=lambda: None):
        def both():
            tick()
            between()
        return wait_online(node, online, deadline, both)
    return wrapped


def test_wake_without_a_recorded_mac_says_how_to_set_it(cluster):
    done = run_tool(cluster, "wake", "node2", "--timeout", "10")
    assert done.returncode == 1
    assert "ravada-mac" in done.stderr and "crm_attribute" in done.stderr


def test_node_shell_runs_locally_or_through_the_template_and_refuses_odd_names(tmp_path):
    from ocf_ravada.nodeshell import NodeCommandError, NodeShell
    shell = NodeShell("node1", "ssh -o BatchMode=yes {node}", "ipmitool -H {node}-bmc chassis power off")
    assert shell.argv("node1", ["pacemakerd", "--shutdown"]) == ["pacemakerd", "--shutdown"]
    assert shell.argv("node2", ["corosync-cfgtool", "-H"]) == ["ssh", "-o", "BatchMode=yes", "node2",
                                                               "corosync-cfgtool", "-H"]
    for bad in ("-oProxyCommand=x", "node2;reboot", "", "a b"):
        with pytest.raises(NodeCommandError, match="not a host name"):
            shell.argv(bad, ["true"])
    # The power-off template runs as given, with the node filled in, never through a shell.
    record = tmp_path / "argv"
    script = tmp_path / "record"
    script.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    script.chmod(0o755)
    NodeShell("node1", poweroff=f"{script} --host {{node}}-bmc off").power_off("node3", 10)
    assert record.read_text().strip() == "--host node3-bmc off"
    failing = NodeShell("node1", shell="false {node}")
    with pytest.raises(NodeCommandError, match="failed"):
        failing.run("node2", ["true"], 10)


def fake_node(tmp_path, pacemakerd_polls: int, corosync_vetoes: bool):
    """A node shell whose node keeps pacemakerd for a few polls after `pacemakerd --shutdown`
    (as the real one does) and whose corosync may ignore `corosync-cfgtool -H` (a veto)."""
    from ocf_ravada.nodeshell import NodeShell
    log = tmp_path / "ran"
    script = tmp_path / "node"
    script.write_text(
        f'#!/bin/sh\nshift\necho "$*" >> {log}\n'
        'case "$*" in\n'
        f'  "crmadmin --pacemakerd"*) grep -q "^pacemakerd --shutdown" {log} || exit 0;'
        f' [ $(grep -c "^crmadmin" {log}) -gt {pacemakerd_polls + 1} ] && exit 102; exit 0;;\n'
        f'  "corosync-cfgtool -s") grep -q "^corosync-cfgtool -H" {log} && [ {int(not corosync_vetoes)} = 1 ]'
        ' && exit 1; exit 0;;\n'
        'esac\n')
    script.chmod(0o755)
    return NodeShell("here", shell=f"{script} {{node}}"), log


def test_stopping_the_stack_waits_until_pacemakerd_is_gone_before_corosync(tmp_path, monkeypatch):
    from ocf_ravada import nodeshell
    monkeypatch.setattr(nodeshell, "POLL", 0.05)
    shell, log = fake_node(tmp_path, pacemakerd_polls=3, corosync_vetoes=False)
    assert shell.stop_pacemaker("node2", 10) and shell.stop_corosync("node2", 10)
    ran = log.read_text().splitlines()
    stop_corosync = ran.index("corosync-cfgtool -H")
    assert ran.index("pacemakerd --shutdown") < stop_corosync
    # Pacemakerd was asked until it no longer answered, and only then corosync was stopped.
    assert sum(1 for line in ran[:stop_corosync] if line.startswith("crmadmin")) == 5
    # Run again: both are gone, nothing is stopped twice.
    assert not shell.stop_pacemaker("node2", 10) and not shell.stop_corosync("node2", 10)


def test_a_corosync_that_does_not_stop_is_an_error_not_a_success(tmp_path, monkeypatch):
    from ocf_ravada import nodeshell
    monkeypatch.setattr(nodeshell, "POLL", 0.05)
    shell, _log = fake_node(tmp_path, pacemakerd_polls=0, corosync_vetoes=True)
    with pytest.raises(nodeshell.NodeCommandError, match="corosync on node2 still runs"):
        shell.stop_corosync("node2", 2)


def test_a_pacemakerd_stopped_by_someone_else_meanwhile_counts_as_stopped(tmp_path):
    """Between the look and `pacemakerd --shutdown`, a racing invocation stopped it: the
    request fails, yet pacemakerd is gone, which is what was wanted."""
    from ocf_ravada.nodeshell import NodeShell
    log = tmp_path / "ran"
    script = tmp_path / "node"
    script.write_text(f'#!/bin/sh\nshift\necho "$*" >> {log}\n'
                      'case "$*" in\n'
                      f'  "crmadmin --pacemakerd"*) grep -q "^pacemakerd --shutdown" {log} && exit 102; exit 0;;\n'
                      '  "pacemakerd --shutdown") exit 1;;\n'
                      'esac\n')
    script.chmod(0o755)
    assert NodeShell("here", shell=f"{script} {{node}}").stop_pacemaker("node2", 10)
