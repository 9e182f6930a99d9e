"""The lab's pieces that need no daemon: fence agent interface, configs, command-line errors.

(They live next to the e2e tests because they test the same component; no `lab` marker.)
"""

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from ravada_lab import configs, fence
from ravada_lab.errors import LabError
from ravada_lab.layout import LabLayout, check_name, node_index

TOP = Path(__file__).resolve().parents[2]
FENCE = [str(TOP / "lab" / "fence_ravada_lab")]
RAVADA_LAB = [str(TOP / "lab" / "ravada-lab")]
PACEMAKER_SCHEMA = Path("/usr/share/pacemaker/pacemaker-3.9.rng")


def run(argv, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)


def test_fence_metadata_declares_fence_agent_interface():
    result = run(FENCE + ["-o", "metadata"])
    assert result.returncode == 0
    agent = etree.fromstring(result.stdout.encode())
    assert agent.tag == "resource-agent" and agent.get("name") == "fence_ravada_lab"
    actions = {a.get("name") for a in agent.iterfind("actions/action")}
    assert {"on", "off", "reboot", "status", "list", "monitor", "metadata"} <= actions
    params = {p.get("name"): p for p in agent.iterfind("parameters/parameter")}
    assert params["plug"].get("obsoletes") == "port"
    assert params["port"].get("deprecated") == "1"
    assert params["action"].find("content").get("default") == "reboot"


def test_fence_metadata_from_stdin_like_pacemaker():
    result = run(FENCE, "action=metadata\n")
    assert result.returncode == 0 and "<resource-agent" in result.stdout


@pytest.mark.parametrize("stdin, message", [
    ("action=off\nlab=nosuchlab\nplug=node2\n", "no lab controller"),
    ("action=off\nlab=nosuchlab\n", "needs the node"),
    ("action=dance\nplug=node1\n", "unsupported action"),
    ("action=off\nlab=Bad Name\nplug=node1\n", "invalid lab name"),
])
def test_fence_refuses_clearly(stdin, message):
    result = run(FENCE, stdin)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_corosync_conf_lists_every_node_and_two_node_only_for_two():
    lab = LabLayout.for_lab("x")
    three = configs.corosync_conf(lab, lab.nodes(3))
    assert "transport: knet" in three and "two_node" not in three
    assert all(f"ring0_addr: 10.99.0.{i}" in three and f"name: node{i}" in three
               for i in (1, 2, 3))
    assert "two_node: 1" in configs.corosync_conf(lab, lab.nodes(2))


def test_libvirt_configs_give_each_node_its_own_uuid_and_listener():
    lab = LabLayout.for_lab("x")
    node1, node2 = lab.nodes(2)
    conf1, conf2 = configs.libvirtd_conf(lab, node1), configs.libvirtd_conf(lab, node2)
    assert 'listen_addr = "10.99.0.1"' in conf1 and 'auth_tcp = "none"' in conf1
    uuid_line = [line for line in conf1.splitlines() if line.startswith("host_uuid")]
    assert uuid_line and uuid_line[0] not in conf2
    assert 'user = "root"' in configs.qemu_conf(node1)


@pytest.mark.skipif(not PACEMAKER_SCHEMA.exists(), reason="pacemaker schema not installed")
def test_seed_cib_is_valid_pacemaker_xml():
    schema = etree.RelaxNG(file=str(PACEMAKER_SCHEMA))
    assert schema.validate(etree.fromstring(configs.seed_cib())), schema.error_log


@pytest.mark.parametrize("bad", ["", "Lab", "1lab", "a/b", "x" * 17])
def test_lab_names_are_checked(bad):
    with pytest.raises(LabError):
        check_name(bad)


@pytest.mark.parametrize("bad", ["node0", "nodeX", "host1", "node"])
def test_node_names_are_checked(bad):
    with pytest.raises(LabError):
        node_index(bad)


@pytest.mark.parametrize("argv, message", [
    (["up", "--nodes", "0", "--name", "offline"], "invalid node count"),
    (["up", "--name", "Bad!"], "invalid lab name"),
    (["--name", "offline", "exec", "node1", "--", "true"], "is not up"),
    (["kill", "node1", "--name", "offline"], "no lab controller"),
    (["--name", "offline", "ssh", "node1", "true"], "no lab controller"),
    (["--name", "offline", "ssh", "node1"], "needs a command"),
])
def test_cli_errors_are_messages_not_tracebacks(argv, message):
    result = run(RAVADA_LAB + argv)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not PACEMAKER_SCHEMA.exists(), reason="pacemaker schema not installed")
def test_fencing_template_fits_a_valid_cib():
    cib = etree.fromstring(configs.seed_cib())
    template = etree.parse(str(TOP / "cib-templates" / "lab-fencing.xml")).getroot()
    cib.find("configuration/resources").append(template)
    schema = etree.RelaxNG(file=str(PACEMAKER_SCHEMA))
    assert schema.validate(cib), schema.error_log
    assert template.get("type") == fence.AGENT.name
