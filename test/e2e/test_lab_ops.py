"""Day-2 operations on the real 3-node lab: ravada-cib against the live CIB, drain / undrain /
shutdown / wake, the emergency shutdown started by a real NUT (with a second invocation
racing the first), and the alert agent on a real fencing.

Needs from the lab: the installed tree (make install), the lab's power control reachable from
a node (fence_ravada_lab) and Wake-on-LAN: a magic packet for a powered-off node's MAC seen on
the lab network powers it on (issue 9).
"""
from __future__ import annotations

import json
import shlex
import time

import pytest
from lxml import etree

from lab_support import Lab
from ravada_lab.cluster import observe
from ravada_lab.errors import LabError
from support.cib_samples import SAMPLES

pytestmark = pytest.mark.lab

ALERT_AGENT = "/usr/share/pacemaker/alerts/ravada_alert"


def sh(lab: Lab, node: str, command: str, check: bool = True):
    return lab.run(node, "sh", "-c", command, check=check)


def cli_bans(lab: Lab, node: str, on: str) -> set[str]:
    cib = etree.fromstring(lab.run(node, "cibadmin", "--query").stdout.encode())
    return {loc.get("rsc") for loc in cib.iter("rsc_location")
            if loc.get("id", "").startswith("cli-ban-") and loc.get("node") == on}


def ops_vms(view) -> dict[str, list[str]]:
    return {vm: nodes for vm, nodes in view.resources.items() if vm.startswith("ops-")}


@pytest.fixture
def ops_cleanup(settled_lab: Lab):
    yield settled_lab
    lab = settled_lab
    node = lab.state().healthy_nodes()[0]
    sh(lab, node, "ravada-cluster resume --force", check=False)
    for vm in list(ops_vms(lab.view())):
        lab.pcs("resource", "delete", vm, "--force")
    lab.settle()


def test_every_template_passes_crm_verify_with_the_live_cib(settled_lab: Lab):
    """Each template applied to a copy of the lab's live CIB (prerequisites first), then
    Pacemaker's crm_verify on the copy: the live cluster is not changed."""
    lab = settled_lab
    node = lab.state().healthy_nodes()[0]
    nodes = lab.state().node_names
    copy = "/tmp/ravada-cib-lab-check.xml"
    sh(lab, node, f"cibadmin --query > {copy}")
    values = {name: dict(v) for name, v in SAMPLES.items()}
    values["fence-ipmi"].update(node=nodes[0], id=f"fence-ipmi-{nodes[0]}")
    values["fence-rbd"]["nodes"] = " ".join(nodes)
    values["fencing-topology"].update(node=nodes[0], power_device=f"fence-ipmi-{nodes[0]}")
    order = ["cluster-options", "rsc-defaults", "vm", "fence-ipmi", "fence-rbd"] + \
        sorted(set(values) - {"cluster-options", "rsc-defaults", "vm", "fence-ipmi", "fence-rbd"})
    values["base-location"]["vm"] = values["vm"]["id"]
    for name in order:
        args = " ".join(shlex.quote(f"{k}={v}") for k, v in values[name].items())
        sh(lab, node, f"CIB_file={copy} ravada-cib render {name} {args} --apply")
    sh(lab, node, f"crm_verify --verbose --xml-file {copy}")
    # And --check against the live CIB directly, for a template that stands alone.
    sh(lab, node, "ravada-cib render rsc-defaults --check")


def test_drain_undrain_shutdown_wake_round_trip(ops_cleanup: Lab):
    lab = ops_cleanup
    for name in ("ops-a", "ops-b", "ops-c"):
        lab.create_vm(name)
    for name in ("ops-a", "ops-b", "ops-c"):
        lab.wait_started(name)
    view = lab.view()
    target = next(nodes[0] for nodes in ops_vms(view).values())
    other = next(n for n in lab.state().healthy_nodes() if n != target)
    before = len(lab.fence_events(target))

    drained = sh(lab, other, f"ravada-node drain {target} --timeout 300")
    assert "NOT moved" not in drained.stdout, drained.stdout
    view = lab.view()
    assert all(target not in nodes and len(nodes) == 1 for nodes in ops_vms(view).values()), view.resources
    assert cli_bans(lab, other, target) >= {"ops-a", "ops-b", "ops-c"}

    sh(lab, other, f"ravada-node undrain {target}")
    assert cli_bans(lab, other, target) == set()

    # The node's MAC on the lab network, published by `ravada-lab up` for wake.
    links = json.loads(lab.run(target, "ip", "-j", "link", "show", "dev", "eth0").stdout)
    published = lab.run(other, "crm_attribute", "--node", target, "--name", "ravada-mac",
                        "--query", "--quiet").stdout.strip()
    assert published == links[0]["address"], (published, links)

    poweroff = f"fence_ravada_lab --lab={lab.name} --action=off --plug={{node}}"
    sh(lab, target, f"RAVADA_NODE_POWEROFF={shlex.quote(poweroff)} ravada-node shutdown {target} "
                    "--timeout 300", check=False)   # the command's own node goes down under it
    view = lab.wait(lambda v: target not in v.online and not v.unclean, f"{target} offline, cleanly")
    assert all(target not in nodes for nodes in ops_vms(view).values())
    assert len(lab.fence_events(target)) == before, "a clean shutdown must not be fenced"

    woke = sh(lab, other, f"ravada-node wake {target} --timeout 300")
    assert f"{target} is online" in woke.stdout
    lab.wait(lambda v: target in v.online, f"{target} back online")
    # It was the magic packet that powered it on, nothing else.
    assert lab.state().data["power_log"][-1]["client"].startswith("wake-on-lan from "), \
        lab.state().data["power_log"][-3:]
    assert len(lab.fence_events(target)) == before


def stack_runs(lab: Lab, node: str) -> bool:
    """corosync or pacemakerd still runs on the node (seen from inside it)."""
    return node in lab.state().powered_nodes() and \
        sh(lab, node, "pidof corosync pacemakerd", check=False).returncode == 0


def node_shell(lab: Lab) -> str:
    """How the emergency shutdown reaches the other nodes: the lab's stand-in for ssh."""
    return f"RAVADA_NODE_SHELL='ravada-lab --name {lab.name} ssh {{node}}'"


def nut_config(lab: Lab, node: str, directory: str, deadline: int) -> None:
    """The sample configuration of doc/operations.md: dummy-ups standing in for the UPS."""
    files = {
        "ups.conf": "[ups]\n  driver = dummy-ups\n  port = ups.dev\n",
        "ups.dev": "ups.status: OL\nbattery.charge: 100\n",
        "upsd.conf": "LISTEN 127.0.0.1 3493\n",
        "upsd.users": "[admin]\n  password = adminpw\n  actions = SET\n[monuser]\n  password = monpw\n"
                      "  upsmon primary\n",
        "upsmon.conf": ("MONITOR ups@127.0.0.1:3493 1 monuser monpw primary\nMINSUPPLIES 1\n"
                        f'SHUTDOWNCMD "{node_shell(lab)} ravada-cluster emergency-shutdown --deadline {deadline} '
                        f'>> {directory}/shutdown.log 2>&1"\n'
                        "POLLFREQ 1\nPOLLFREQALERT 1\nHOSTSYNC 2\nFINALDELAY 0\n"
                        f"POWERDOWNFLAG {directory}/killpower\n"),
    }
    sh(lab, node, f"mkdir -p {directory}/run")
    for name, text in files.items():
        sh(lab, node, f"cat > {directory}/{name} <<'EOF'\n{text}EOF\nchmod 640 {directory}/{name}")
    env = f"NUT_CONFPATH={directory} NUT_STATEPATH={directory}/run NUT_ALTPIDPATH={directory}/run"
    sh(lab, node, f"{env} setsid /lib/nut/dummy-ups -a ups -F -u root > /dev/null 2>&1 &")
    sh(lab, node, f"sleep 2; {env} setsid /lib/nut/upsd -F -u root > /dev/null 2>&1 &")
    sh(lab, node, f"sleep 2; {env} setsid /lib/nut/upsmon -F -u root > /dev/null 2>&1 &")


def test_emergency_shutdown_from_nut_with_a_racing_second_invocation(ops_cleanup: Lab):
    """Several VMs (one ignoring ACPI), NUT's low battery on node1 starts the shutdown while
    node2 starts another: within the deadline every VM is stopped, none restarted elsewhere,
    nothing fenced, the stack down on every node.  Then the stack comes back and resume
    restores the VMs."""
    lab = ops_cleanup
    nodes = lab.state().node_names
    deadline = 240
    for name, priority in (("ops-low", 0), ("ops-mid", 5), ("ops-acpi", 5), ("ops-high", 10)):
        lab.create_vm(name)
        lab.pcs("resource", "meta", name, f"priority={priority}")
    # A guest that ignores ACPI: the agent must destroy it itself, in time.
    lab.pcs("resource", "update", "ops-acpi", "force_stop=false")
    for name in ("ops-low", "ops-mid", "ops-acpi", "ops-high"):
        lab.wait_started(name)
    # Pacemaker's fencing history does not survive the whole cluster stopping: the lab's power
    # switch is the witness.
    wall = time.time()
    directory = f"{lab.layout.shared_dir}/nut"
    nut_config(lab, nodes[0], directory, deadline)
    time.sleep(3)

    env = f"NUT_CONFPATH={directory} NUT_STATEPATH={directory}/run"
    began = time.monotonic()
    sh(lab, nodes[0], f"{env} upsrw -s ups.status='OB LB' -u admin -p adminpw ups@127.0.0.1:3493")
    # The racing second invocation, as a secondary upsmon on node2 would start it.
    sh(lab, nodes[1], f"{node_shell(lab)} setsid ravada-cluster emergency-shutdown --deadline {deadline} "
                      f"> {directory}/second.log 2>&1 &")
    seen_started: dict[str, set[str]] = {}
    end = time.monotonic() + deadline + 60
    running = list(nodes)
    while time.monotonic() < end:
        running = [n for n in nodes if stack_runs(lab, n)]
        if not running:
            break
        try:
            view = observe(lab.state(), via=running[0])
        except LabError:        # that node's stack is going down just now
            continue
        for vm, where in ops_vms(view).items():
            seen_started.setdefault(vm, set()).update(where)
        time.sleep(1)
    took = time.monotonic() - began
    log = sh(lab, nodes[0], f"cat {directory}/shutdown.log").stdout
    second = sh(lab, nodes[1], f"cat {directory}/second.log").stdout
    assert "every VM is stopped" in log + second, log + second
    assert not running, f"the cluster stack still runs on {', '.join(running)}"
    assert took <= deadline + 30, f"took {took:.0f}s for a {deadline}s deadline"
    # No VM was ever seen on a second node (nothing restarted elsewhere).
    assert all(len(where) <= 1 for where in seen_started.values()), seen_started
    # Exactly one invocation did the work.
    assert ("already run by" in log) != ("already run by" in second)

    # Power returns: the lab restarts each node's daemons (never systemctl inside a lab node:
    # it would reach the host's systemd).
    for node in nodes:
        lab.cli("kill", node, check=False)
        lab.cli("on", node)
    lab.wait(lambda v: v.online == set(nodes), "the cluster back")
    fenced = {n: lab.power_ops(n, wall) for n in nodes}
    assert not any(fenced.values()), f"nothing may be fenced: {fenced}"
    view = lab.view()
    assert not any(ops_vms(view).values()), f"nothing starts before resume: {view.resources}"
    sh(lab, nodes[0], "ravada-cluster resume")
    for name in ("ops-low", "ops-mid", "ops-acpi", "ops-high"):
        lab.wait_started(name)


def test_alert_agent_fires_on_a_real_fencing(settled_lab: Lab):
    lab = settled_lab
    nodes = lab.state().node_names
    victim, witness = nodes[-1], nodes[0]
    log = f"{lab.layout.shared_dir}/alerts.log"
    hooks = f"{lab.layout.shared_dir}/alert.d"
    record = f"{lab.layout.shared_dir}/hook-ran"
    sh(lab, witness, f"mkdir -p {hooks}; printf '#!/bin/sh\\necho \"$1 $CRM_alert_node\" >> {record}\\n' "
                     f"> {hooks}/10-record; chmod 755 {hooks}/10-record; touch {log}; "
                     f"chown hacluster {log} {lab.layout.shared_dir}; rm -f {record}")
    sh(lab, witness, f"ravada-cib render alert hooks_dir={hooks} recipient={log} --apply")
    fenced_before = len(lab.fence_events(victim))
    try:
        lab.cli("kill", victim)          # a power cut: Pacemaker fences the node
        deadline = time.monotonic() + 120
        while len(lab.fence_events(victim)) == fenced_before:
            assert time.monotonic() < deadline, f"{victim} was not fenced"
            time.sleep(1)
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = sh(lab, witness, f"cat {log}").stdout
            if f"fencing (reboot) of {victim} succeeded" in text or f"fencing (off) of {victim} succeeded" in text:
                break
            time.sleep(1)
        assert f"of {victim} succeeded" in text, text
        assert f"node {victim}" in text and "is now lost" in text
        assert f"fencing {victim}" in sh(lab, witness, f"cat {record}").stdout
    finally:
        lab.run(witness, "cibadmin", "--delete", "--xml-text", '<alert id="ravada-alert"/>', check=False)
        lab.cli("on", victim, check=False)
        lab.settle()
