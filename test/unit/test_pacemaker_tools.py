"""ocf_ravada.pacemaker: bounded calls, typed errors, the node-attribute precedence, safe XML.

The real Pacemaker tools run against a saved CIB ($CIB_file); hung or missing tools are
stand-ins on PATH, because a real hung cibadmin cannot be produced on demand.
"""
import os
import shutil
import time

import pytest
from lxml import etree

from ocf_ravada import pacemaker
from ocf_ravada.deadline import Deadline

CIB = """<cib epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config/>
    <nodes>
      <node id="1" uname="node1"><instance_attributes id="nodes-1">
        <nvpair id="nodes-1-a" name="ravada-x" value="permanent"/></instance_attributes></node>
      <node id="2" uname="node2"><instance_attributes id="nodes-2">
        <nvpair id="nodes-2-a" name="ravada-x" value="only-permanent"/></instance_attributes></node>
      <node id="3" uname="node3"/>
    </nodes>
    <resources/>
    <constraints/>
  </configuration>
  <status>
    <node_state id="1" uname="node1" in_ccm="true" crmd="online" join="member" expected="member">
      <transient_attributes id="1"><instance_attributes id="status-1">
        <nvpair id="status-1-a" name="ravada-x" value="transient"/></instance_attributes></transient_attributes>
    </node_state>
    <node_state id="3" in_ccm="true" crmd="online" join="member" expected="member">
      <transient_attributes id="3"><instance_attributes id="status-3">
        <nvpair id="status-3-a" name="ravada-x" value="by-id"/></instance_attributes></transient_attributes>
    </node_state>
  </status>
</cib>
"""

needs_pacemaker = pytest.mark.skipif(shutil.which("cibadmin") is None, reason="pacemaker-cli-utils not installed")


@pytest.fixture
def cib_file(tmp_path, monkeypatch):
    """CIB with the installed Pacemaker's own feature set and schema (newer ones are refused)."""
    empty = pacemaker.safexml.parse(pacemaker.run(["cibadmin", "--empty"], Deadline(10)))
    root = pacemaker.safexml.parse(CIB)
    for name in ("crm_feature_set", "validate-with"):
        root.set(name, empty.get(name))
    path = tmp_path / "cib.xml"
    path.write_bytes(etree.tostring(root))
    monkeypatch.setenv("CIB_file", str(path))
    return path


def _stand_in(tmp_path, monkeypatch, name, script):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / name
    tool.write_text("#!/bin/sh\n" + script + "\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")


def test_transient_attribute_wins_over_permanent():
    root = pacemaker.safexml.parse(CIB)
    assert pacemaker.node_attributes(root, "ravada-x") == {
        "node1": "transient", "node2": "only-permanent", "node3": "by-id"}
    assert pacemaker.node_attribute(root, "node1", "ravada-x") == "transient"
    assert pacemaker.node_attribute(root, "node1", "other") is None


@needs_pacemaker
def test_query_cib_through_cibadmin(cib_file):
    root = pacemaker.query_cib(Deadline(10))
    assert pacemaker.node_attribute(root, "node2", "ravada-x") == "only-permanent"


@needs_pacemaker
def test_a_failed_tool_is_a_typed_error_with_its_message(cib_file):
    with pytest.raises(pacemaker.ToolFailed) as caught:
        pacemaker.set_node_attribute("ravada-y", "1", Deadline(10), node="no-such-node")
    assert caught.value.returncode != 0
    assert "crm_attribute failed" in caught.value.reason


@needs_pacemaker
def test_an_attribute_written_by_crm_attribute_is_read_back(cib_file):
    pacemaker.set_node_attribute("ravada-y", "42", Deadline(10), node="node1", lifetime="reboot")
    pacemaker.set_node_attribute("ravada-x", "new-permanent", Deadline(10), node="node1")
    root = pacemaker.query_cib(Deadline(10))
    assert pacemaker.node_attribute(root, "node1", "ravada-y") == "42"
    assert pacemaker.node_attribute(root, "node1", "ravada-x") == "transient"
    pacemaker.set_node_attribute("ravada-x", "set", Deadline(10), node="node3")
    assert pacemaker.node_attribute(pacemaker.query_cib(Deadline(10)), "node3", "ravada-x") == "by-id"


def test_a_hung_tool_is_killed_at_the_deadline(tmp_path, monkeypatch):
    _stand_in(tmp_path, monkeypatch, "cibadmin", "exec sleep 60")
    started = time.monotonic()
    with pytest.raises(pacemaker.ToolTimeout, match="did not answer"):
        pacemaker.query_cib(Deadline(1.0))
    assert time.monotonic() - started < 5


def test_the_per_call_limit_is_shorter_than_the_deadline(tmp_path, monkeypatch):
    _stand_in(tmp_path, monkeypatch, "crm_mon", "exec sleep 60")
    started = time.monotonic()
    with pytest.raises(pacemaker.PacemakerError):
        pacemaker.cluster_status(Deadline(60), limit=0.5)
    assert time.monotonic() - started < 5


def test_no_time_left_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    _stand_in(tmp_path, monkeypatch, "cibadmin", f"touch {marker}")
    with pytest.raises(pacemaker.ToolTimeout):
        pacemaker.query_cib(Deadline(0))
    assert not marker.exists()


def test_a_missing_tool_is_a_typed_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pacemaker.ToolMissing, match="not installed"):
        pacemaker.query_cib(Deadline(5))


def test_tool_output_with_entities_is_refused(tmp_path, monkeypatch):
    doc = '<!DOCTYPE cib [<!ENTITY x "y">]><cib><configuration/></cib>'
    (tmp_path / "out.xml").write_text(doc)
    _stand_in(tmp_path, monkeypatch, "cibadmin", f"cat {tmp_path / 'out.xml'}")
    with pytest.raises(pacemaker.BadOutput, match="DOCTYPE"):
        pacemaker.query_cib(Deadline(5))


def test_undecodable_tool_output_does_not_raise_unicode_errors(tmp_path, monkeypatch):
    _stand_in(tmp_path, monkeypatch, "crm_attribute", r"printf 'bad \377\376 bytes' >&2; exit 1")
    with pytest.raises(pacemaker.ToolFailed, match="bad"):
        pacemaker.set_node_utilization("cpu", "1", Deadline(5))


def test_local_node_name(tmp_path, monkeypatch):
    _stand_in(tmp_path, monkeypatch, "crm_node", "echo node7")
    assert pacemaker.local_node(Deadline(5)) == "node7"
    _stand_in(tmp_path, monkeypatch, "crm_node", "echo")
    with pytest.raises(pacemaker.BadOutput):
        pacemaker.local_node(Deadline(5))


def test_rbd_local_node_name_is_none_when_pacemaker_cannot_tell(tmp_path, monkeypatch):
    from ocf_ravada.rbd.nodes import local_node_name

    _stand_in(tmp_path, monkeypatch, "crm_node", "exec sleep 60")
    started = time.monotonic()
    assert local_node_name(timeout=0.5) is None
    assert time.monotonic() - started < 5
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert local_node_name() is None


def _with_vm(root, utilization=""):
    """`root` with primitive vm (in a clone, as a clone instance would be) and, given, its
    utilization block."""
    resources = root.find("configuration/resources")
    resources.append(etree.fromstring(
        f'<clone id="vm-clone"><primitive id="vm" class="ocf" provider="ravada" type="VirtualDomain">'
        f'{utilization}</primitive></clone>'))
    return root


def test_utilization_edit_keeps_existing_ids_and_never_reuses_one():
    taken = '<utilization id="u1"><nvpair id="vm-utilization" name="cpu" value="4"/>' \
            '<nvpair id="u1-mem" name="hv_memory" value="1"/></utilization>'
    root = _with_vm(pacemaker.safexml.parse(CIB), taken)
    new = pacemaker.with_utilization(root, {"vm": {"cpu": "2", "hv_memory": None, "host_memory": "96"}})
    block = new.find("configuration/resources/clone/primitive/utilization")
    assert [(nv.get("id"), nv.get("name"), nv.get("value")) for nv in block] == [
        ("vm-utilization", "cpu", "2"), ("u1-host_memory", "host_memory", "96")]
    assert root.find("configuration/resources/clone/primitive/utilization/nvpair").get("value") == "4"


def test_utilization_block_is_created_with_a_fresh_id():
    root = _with_vm(pacemaker.safexml.parse(CIB))
    root.find("configuration/constraints").append(etree.fromstring(
        '<rsc_location id="vm-utilization" rsc="vm" node="node1" score="1"/>'))
    new = pacemaker.with_utilization(root, {"vm": {"cpu": "1"}})
    block = new.find("configuration/resources/clone/primitive/utilization")
    assert block.get("id") == "vm-utilization-2"
    assert [(nv.get("id"), nv.get("value")) for nv in block] == [("vm-utilization-2-cpu", "1")]
    with pytest.raises(pacemaker.PacemakerError, match="no primitive ghost"):
        pacemaker.with_utilization(root, {"ghost": {"cpu": "1"}, "vm": {}})


@needs_pacemaker
def test_utilization_is_written_in_one_update_and_only_when_it_differs(cib_file):
    pacemaker.create_element("resources", etree.fromstring(
        '<primitive id="vm" class="ocf" provider="ravada" type="VirtualDomain"/>'), Deadline(10))

    def epoch():
        return int(pacemaker.query_cib(Deadline(10)).get("epoch"))

    before = epoch()
    values = {"cpu": "2", "hv_memory": "96", "host_memory": "96"}
    assert pacemaker.set_resource_utilization("vm", values, Deadline(20)) is True
    assert epoch() == before + 1
    for name, value in values.items():
        assert pacemaker.run(["crm_resource", "--resource", "vm", "--utilization", "--get-parameter", name],
                             Deadline(10)).strip() == value
    assert pacemaker.set_resource_utilization("vm", values, Deadline(20)) is False
    assert epoch() == before + 1
    assert pacemaker.set_resource_utilization("vm", {"cpu": None}, Deadline(20)) is True
    left = pacemaker.query_cib(Deadline(10)).find("configuration/resources/primitive/utilization")
    assert sorted(nv.get("name") for nv in left) == ["host_memory", "hv_memory"]
    pacemaker.set_option("crm_config", "stonith-enabled", "false", Deadline(10))  # crm_verify's only complaint
    valid, messages = pacemaker.verify(str(cib_file), Deadline(20))
    assert valid, messages
