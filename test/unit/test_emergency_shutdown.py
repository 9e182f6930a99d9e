"""ravada-cluster emergency-shutdown and resume on a simulated cluster (crm_simulate runs the
transitions on a CIB file): priority order, no fencing or recovery settings, escalation to
forced stops, the CIB lock against a second invocation, the stack stopped on every node (through
a recording node shell), and resume putting everything back.  On real nodes with NUT:
test/e2e/test_lab_ops.py."""
import os
import subprocess
import time

import pytest

from ocf_ravada import emergency, pacemaker
from ocf_ravada.deadline import Deadline
from ocf_ravada.nodeshell import NodeShell
from support.simcluster import SimCluster
from support.stack import require_stack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "ravada-cluster")


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    require_stack("a simulated cluster", "crm_simulate", "crm_mon", "cibadmin", "crm_resource")
    sim = SimCluster(tmp_path, {"node1": (8, 16384), "node2": (8, 16384), "node3": (8, 16384)})
    sim.add_vm("low", memory=1024, priority=0)
    sim.add_vm("mid", memory=1024, priority=5)
    sim.add_vm("high", memory=1024, priority=10)
    sim.add_vm("high2", memory=1024, priority=10)
    sim.start()
    monkeypatch.setenv("CIB_file", str(sim.path))
    monkeypatch.setattr(emergency, "POLL", 0.2)
    return sim


@pytest.fixture
def recorder(tmp_path):
    """A node shell that records the stop commands it is asked to run instead of running them,
    and answers the state probes as a node would: a daemon is gone once its stop was run."""
    log = tmp_path / "node-commands"
    script = tmp_path / "fake-shell"
    script.write_text(f'#!/bin/sh\ntouch {log}\n'
                      'case "$2 $3" in\n'
                      f'  "crmadmin --pacemakerd") grep -qx "$1 pacemakerd --shutdown" {log} && exit 102; exit 0;;\n'
                      f'  "corosync-cfgtool -s") grep -qx "$1 corosync-cfgtool -H" {log} && exit 1; exit 0;;\n'
                      'esac\n'
                      f'echo "$@" >> {log}\n')
    script.chmod(0o755)
    return NodeShell(local_node="not-a-member", shell=f"{script} {{node}}"), log


def roles(sim: SimCluster) -> dict[str, str | None]:
    cib = sim.cib()
    return {p.get("id"): next((nv.get("value") for nv in p.iterfind("meta_attributes/nvpair")
                               if nv.get("name") == "target-role"), None)
            for p in cib.iter("primitive")}


def test_stops_every_vm_in_priority_order_then_the_stack(cluster, recorder):
    shell, commands = recorder
    lines, stops = [], []

    def tick():
        before = set(cluster.where())
        cluster.settle()
        stops.extend(sorted(before - set(cluster.where())))

    job = emergency.EmergencyShutdown(300, shell, lines.append, tick=tick)
    assert job.run()
    assert not [vm for vm in cluster.where() if vm in ("low", "mid", "high", "high2")]
    # Lowest priority first, the priority-10 pair last (together).
    assert stops.index("low") < stops.index("mid") < min(stops.index("high"), stops.index("high2"))
    assert [line for line in lines if line.startswith("stopping priority")] == \
        ["stopping priority 0: low", "stopping priority 5: mid", "stopping priority 10: high, high2"]
    assert not any("escalating" in line for line in lines)
    cib = cluster.cib()
    assert pacemaker.option(cib, "op_defaults", "on-fail") == "block"
    assert pacemaker.option(cib, "crm_config", "stop-all-resources") == "true"
    assert pacemaker.option(cib, "crm_config", "stonith-enabled") == "false"   # untouched
    assert emergency.lock_values(cib)["state"] == "done"
    recorded = commands.read_text().splitlines()
    assert sorted(recorded[:3]) == [f"node{n} pacemakerd --shutdown" for n in (1, 2, 3)]
    assert sorted(recorded[3:]) == [f"node{n} corosync-cfgtool -H" for n in (1, 2, 3)]
    # Nothing was restarted anywhere after it stopped: the simulator started nothing.
    cluster.settle()
    assert not [vm for vm in cluster.where() if vm in ("low", "mid", "high", "high2")]
    assert subprocess.run(["crm_verify", "--xml-file", str(cluster.path)]).returncode == 0

    restored = emergency.resume(Deadline(60), lines.append)
    assert sorted(restored) == ["high", "high2", "low", "mid"]
    assert roles(cluster) == {"low": "Started", "mid": "Started", "high": "Started", "high2": "Started"}
    cib = cluster.cib()
    assert pacemaker.option(cib, "op_defaults", "on-fail") is None
    assert pacemaker.option(cib, "crm_config", "stop-all-resources") is None
    assert emergency.lock_values(cib) is None
    assert not cib.xpath("//nvpair[starts-with(@name, 'ravada-emergency')]")
    cluster.settle()
    assert {vm for vm in cluster.where()} >= {"low", "mid", "high", "high2"}


def test_resume_restores_the_roles_as_they_were(cluster, recorder):
    """The template gave every VM target-role=Started; one without any comes back without."""
    pacemaker.delete_meta("mid", "target-role", Deadline(30))
    pacemaker.set_meta("low", "target-role", "Stopped", Deadline(30))
    emergency.EmergencyShutdown(300, recorder[0], lambda _l: None, tick=cluster.settle).run()
    emergency.resume(Deadline(60), lambda _l: None)
    assert roles(cluster) == {"low": "Stopped", "mid": None, "high": "Started", "high2": "Started"}


def test_short_deadline_escalates_to_forced_stops(cluster, recorder):
    lines = []
    # 40 s: 10 s for the stack, and the 90 s stop timeout cannot fit: force from the start.
    job = emergency.EmergencyShutdown(40, recorder[0], lines.append, tick=cluster.settle)
    assert job.run()
    assert any(line.startswith("escalating: forced stop of") for line in lines)
    cib = cluster.cib()
    forced = {p.get("id") for p in cib.iter("primitive")
              if p.xpath("instance_attributes/nvpair[@name='force_stop' and @value='true']")}
    assert forced == {"low", "mid", "high", "high2"}
    emergency.resume(Deadline(60), lambda _l: None)
    assert not cluster.cib().xpath("//nvpair[@name='force_stop']")


def test_a_second_invocation_waits_for_the_first_and_changes_nothing(cluster, recorder):
    now = time.time()
    held = {"owner": "othernode:1234", "started": f"{now:.0f}", "deadline": f"{now + 600:.0f}",
            "state": "stopping-vms", "saved-on-fail": emergency.UNSET, "saved-stop-all-resources": emergency.UNSET}
    assert pacemaker.create_element("crm_config", emergency._lock_element(held), Deadline(30))
    before = roles(cluster)
    lines = []
    job = emergency.EmergencyShutdown(12, recorder[0], lines.append, tick=cluster.settle)
    began = time.monotonic()
    assert job.run()
    assert time.monotonic() - began < 20
    assert any("already run by othernode:1234" in line for line in lines)
    assert roles(cluster) == before
    assert emergency.lock_values(cluster.cib())["owner"] == "othernode:1234"
    assert not recorder[1].exists()
    # Resume refuses while that one seems to be running.
    with pytest.raises(emergency.EmergencyError, match="othernode"):
        emergency.resume(Deadline(30), lambda _l: None)


def test_a_stale_lock_is_taken_over(cluster, recorder):
    held = {"owner": "deadnode:99", "started": "1", "deadline": "2", "state": "stopping-vms",
            "saved-on-fail": emergency.UNSET, "saved-stop-all-resources": emergency.UNSET}
    pacemaker.create_element("crm_config", emergency._lock_element(held), Deadline(30))
    lines = []
    assert emergency.EmergencyShutdown(300, recorder[0], lines.append, tick=cluster.settle).run()
    assert any("stale" in line for line in lines)
    assert not [vm for vm in cluster.where() if vm in ("low", "mid", "high", "high2")]


def test_running_it_again_after_it_finished_is_harmless(cluster, recorder):
    emergency.EmergencyShutdown(300, recorder[0], lambda _l: None, tick=cluster.settle).run()
    lines = []
    assert emergency.EmergencyShutdown(20, recorder[0], lines.append, tick=cluster.settle).run()
    assert any("already run" in line for line in lines)
    emergency.resume(Deadline(60), lambda _l: None)
    assert roles(cluster)["high"] == "Started"     # the saved value survived the second run


def test_dry_run_through_the_command_changes_nothing(cluster):
    before = cluster.path.read_bytes()
    done = subprocess.run(["/usr/bin/python3", TOOL, "emergency-shutdown", "--dry-run", "--deadline", "120"],
                          capture_output=True, text=True, env=cluster.env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "class 1 (priority 0): stop low" in done.stdout
    assert "class 3 (priority 10): stop high" in done.stdout
    assert cluster.path.read_bytes() == before


@pytest.mark.parametrize("argv", [["emergency-shutdown", "--deadline", "nan"], ["emergency-shutdown", "--deadline", "5"],
                                  ["reboot-everything"], []])
def test_usage_errors(argv):
    done = subprocess.run(["/usr/bin/python3", TOOL, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_failing_step_is_logged_and_the_stack_still_goes_down(cluster, recorder, monkeypatch):
    """One VM's change refused by Pacemaker: the others still stop and the stack goes down."""
    real_set_meta = pacemaker.set_meta

    def set_meta(resource, name, value, deadline, **kw):
        if resource == "mid" and name == "target-role":
            raise pacemaker.ToolFailed("crm_resource failed: refused", 1, "refused")
        return real_set_meta(resource, name, value, deadline, **kw)

    monkeypatch.setattr(pacemaker, "set_meta", set_meta)
    lines = []
    job = emergency.EmergencyShutdown(40, recorder[0], lines.append, tick=cluster.settle)
    assert not job.run()                        # mid never stopped: reported, exit 3 in the command
    assert any("step failed, going on: crm_resource failed: refused" in line for line in lines)
    assert any(line.startswith("still running at the deadline: mid") for line in lines)
    assert set(cluster.where()) & {"low", "high", "high2"} == set()
    assert "node1 pacemakerd --shutdown" in recorder[1].read_text()
