"""cib-templates/ and ravada-cib: every template renders, merges into a saved CIB and passes
Pacemaker's own crm_verify; a whole cluster is built from ravada-cib output alone; bad input
is an error naming the variable (exit 2).  Pacemaker's tools run on a CIB file ($CIB_file),
no cluster needed."""
import os
import subprocess

import pytest
from lxml import etree

from ocf_ravada import cibtemplates, pacemaker
from ocf_ravada.deadline import Deadline
from support.cib_samples import NODES, SAMPLES
from support.stack import require_stack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "ravada-cib")
@pytest.fixture(scope="module", autouse=True)
def pacemaker_tools():
    require_stack("crm_verify on a CIB file", "crm_verify", "cibadmin", "crm_diff")


def empty_cib(path) -> str:
    """A new cluster's CIB with three nodes, as cibadmin --empty makes it, with quorum and
    the nodes online (as a saved CIB of a running cluster has them)."""
    out = subprocess.run(["cibadmin", "--empty"], capture_output=True, check=True).stdout
    cib = etree.fromstring(out)
    cib.set("have-quorum", "1")
    nodes = cib.find("configuration/nodes")
    for number, name in enumerate(NODES, 1):
        etree.SubElement(nodes, "node", id=str(number), uname=name)
        etree.SubElement(cib.find("status"), "node_state", id=str(number), uname=name, in_ccm="true",
                         crmd="online", join="member", expected="member")
    path.write_bytes(etree.tostring(cib))
    return str(path)


def cib_tool(*argv, cib_file=None, check=False):
    env = {**os.environ, **({"CIB_file": cib_file} if cib_file else {})}
    done = subprocess.run(["/usr/bin/python3", TOOL, *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def verify(path) -> subprocess.CompletedProcess:
    return subprocess.run(["crm_verify", "--verbose", "--xml-file", str(path)], capture_output=True, text=True)


def test_every_template_has_sample_values():
    assert set(cibtemplates.templates()) == set(SAMPLES)


def prerequisites(tmp_path) -> str:
    """A CIB where each template's references exist: a VM vm0, the fence devices, STONITH on."""
    path = empty_cib(tmp_path / "cib.xml")
    cib_tool("render", "vm", "id=vm0", "config=/etc/libvirt/qemu/vm0.xml", "memory=512", "--apply",
             cib_file=path, check=True)
    cib_tool("render", "fence-ipmi", *[f"{k}={v}" for k, v in SAMPLES["fence-ipmi"].items()], "--apply",
             cib_file=path, check=True)
    cib_tool("render", "fence-rbd", f"nodes={' '.join(NODES)}", "--apply", cib_file=path, check=True)
    assert verify(path).returncode == 0, verify(path).stderr
    return path


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_template_renders_and_passes_crm_verify(tmp_path, name):
    path = prerequisites(tmp_path)
    values = [f"{k}={v}" for k, v in SAMPLES[name].items()]
    rendered = cib_tool("render", name, *values, check=True).stdout
    assert etree.fromstring(rendered.encode()).tag == "configuration"
    checked = cib_tool("render", name, *values, "--check", cib_file=path)
    assert checked.returncode == 0, checked.stderr
    assert "crm_verify accepts" in checked.stdout
    # And for real: applied, the CIB file still passes crm_verify and holds the elements.
    cib_tool("render", name, *values, "--apply", cib_file=path, check=True)
    result = verify(path)
    assert result.returncode == 0, result.stderr
    saved = etree.parse(path).getroot()
    for section in etree.fromstring(rendered.encode()):
        for element in section:
            if element.get("id"):
                assert saved.xpath(f"//{element.tag}[@id=$i]", i=element.get("id")), element.get("id")


def test_basesync_template_matches_the_agent():
    """Every parameter the template sets is one the agent declares, and the ops carry the
    agent's advertised timeouts (the template was provisional before the agent existed)."""
    template = cibtemplates.templates()["basesync-clone"]
    assert not template.provisional
    meta = etree.fromstring(subprocess.run(["/usr/bin/python3", os.path.join(REPO, "agents", "basesync"),
                                            "meta-data"], capture_output=True, check=True).stdout)
    declared = {p.get("name") for p in meta.iterfind("parameters/parameter")}
    advertised = {}
    for action in meta.iterfind("actions/action"):
        advertised.setdefault(action.get("name"), action)   # the depth-0 monitor comes first
    done = cib_tool("render", "basesync-clone", "source=node1", "ssh_key=/etc/ravada/basesync_key", check=True)
    assert "provisional" not in done.stderr
    rendered = etree.fromstring(done.stdout.encode())
    assert {nv.get("name") for nv in rendered.iterfind(".//instance_attributes/nvpair")} <= declared
    assert rendered.find(".//nvpair[@name='ssh_key']").get("value") == "/etc/ravada/basesync_key"
    for op in rendered.iter("op"):
        assert op.get("timeout") == advertised[op.get("name")].get("timeout"), op.get("name")
    assert rendered.find(".//op[@name='monitor']").get("interval") == advertised["monitor"].get("interval")


def test_vm_op_timeouts_are_the_agents_advertised_ones():
    meta = etree.fromstring(subprocess.run(["/usr/bin/python3", os.path.join(REPO, "agents", "VirtualDomain"),
                                            "meta-data"], capture_output=True, check=True).stdout)
    advertised = {a.get("name"): a for a in meta.iterfind("actions/action")}
    rendered = etree.fromstring(cib_tool("render", "vm", "id=v", "config=/c", "memory=1", check=True).stdout.encode())
    ops = rendered.findall(".//op")
    assert {op.get("name") for op in ops} == {"start", "stop", "monitor", "migrate_to", "migrate_from"}
    for op in ops:
        assert op.get("timeout") == advertised[op.get("name")].get("timeout")
    monitor = next(op for op in ops if op.get("name") == "monitor")
    assert monitor.get("interval") == advertised["monitor"].get("interval")
    meta_attrs = {nv.get("name"): nv.get("value") for nv in rendered.iterfind(".//meta_attributes/nvpair")}
    assert meta_attrs["allow-migrate"] == "true"
    util = {nv.get("name"): nv.get("value") for nv in rendered.iterfind(".//utilization/nvpair")}
    assert util == {"cpu": "1", "hv_memory": "1"}


def test_nodeinfo_op_timeouts_are_the_agents_advertised_ones():
    meta = etree.fromstring(subprocess.run(["/usr/bin/python3", os.path.join(REPO, "agents", "nodeinfo"),
                                            "meta-data"], capture_output=True, check=True).stdout)
    advertised = {a.get("name"): a.get("timeout") for a in meta.iterfind("actions/action")}
    rendered = etree.fromstring(cib_tool("render", "nodeinfo-clone", check=True).stdout.encode())
    assert {op.get("name"): op.get("timeout") for op in rendered.iter("op")} == \
        {name: advertised[name] for name in ("start", "stop", "monitor")}


def test_values_are_escaped_by_construction():
    hostile = 'a"b<c>&d\'e ]]> <!ENTITY x "y">'
    out = cib_tool("render", "vm", "id=v", "config=/c", "memory=1", f"user={hostile}", check=True).stdout
    parsed = etree.fromstring(out.encode())
    user = parsed.xpath("//nvpair[@name='ravada-user']")[0]
    assert user.get("value") == hostile
    assert len(parsed.xpath("//nvpair[@name='ravada-user']")) == 1


def test_optional_parts_left_out_when_unset():
    out = cib_tool("render", "vm", "id=v", "config=/c", "memory=1", check=True).stdout
    parsed = etree.fromstring(out.encode())
    assert parsed.find("constraints") is None
    assert not parsed.xpath("//nvpair[@name='ravada-base' or @name='ravada-user']")


@pytest.mark.parametrize("argv, named", [
    (["render", "vm", "id=v", "memory=1"], "'config'"),
    (["render", "vm", "id=v", "memory=1", "config=/c", "colour=red"], "'colour'"),
    (["render", "vm", "id=v v", "memory=1", "config=/c"], "'id'"),
    (["render", "vm", "id=v", "memory=lots", "config=/c"], "'memory'"),
    (["render", "vm", "id=v", "memory=1", "config=/c\n"], "'config'"),
    (["render", "vm", "id=", "memory=1", "config=/c"], "'id'"),
    (["render", "vm", "id=v", "id=w", "memory=1", "config=/c"], "'id'"),
    (["render", "vm", "novalue"], "'novalue'"),
    (["render", "no-such-template"], "'no-such-template'"),
    (["render", "vm", "--apply", "--cib", "/tmp/x"], "--cib"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_is_an_error_naming_it(argv, named):
    done = cib_tool(*argv)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_check_reports_crm_verify_rejection(tmp_path):
    path = empty_cib(tmp_path / "cib.xml")
    cib_tool("render", "cluster-options", "stonith_enabled=false", "--apply", cib_file=path, check=True)
    before = open(path, "rb").read()
    done = cib_tool("render", "cluster-options", "placement_strategy=everywhere", "--apply", cib_file=path)
    assert done.returncode == 1
    assert "crm_verify rejects" in done.stderr and "placement-strategy" in done.stderr
    assert open(path, "rb").read() == before      # nothing applied


def test_check_against_a_saved_cib_with_option(tmp_path):
    path = empty_cib(tmp_path / "cib.xml")
    done = cib_tool("render", "base-location", "vm=vm0", "base=b", "--check", "--cib", path)
    # vm0 does not exist in that CIB: crm_verify says so.
    assert done.returncode == 1 and "vm0" in done.stderr


def test_merge_keeps_other_options_and_refuses_id_clashes(tmp_path):
    path = empty_cib(tmp_path / "cib.xml")
    subprocess.run(["crm_attribute", "--type", "crm_config", "--name", "no-quorum-policy", "--update", "freeze"],
                   env={**os.environ, "CIB_file": path}, check=True, capture_output=True)
    cib_tool("render", "cluster-options", "stonith_enabled=false", "--apply", cib_file=path, check=True)
    saved = etree.parse(path).getroot()
    props = {nv.get("name"): nv.get("value") for nv in saved.iterfind(".//cluster_property_set/nvpair")}
    assert props["no-quorum-policy"] == "freeze" and props["placement-strategy"] == "balanced"
    again = cib_tool("render", "cluster-options", "stonith_enabled=false", "--apply", cib_file=path, check=True)
    assert "already in place" in again.stdout
    # A VM whose id is a fence device's: refused before anything is applied.
    cib_tool("render", "fence-rbd", "nodes=node1", "--apply", cib_file=path, check=True)
    clash = cib_tool("render", "vm", "id=fence-rbd-instance_attributes", "config=/c", "memory=1", "--apply",
                     cib_file=path)
    assert clash.returncode == 2 and "used twice" in clash.stderr


def test_full_cluster_from_ravada_cib_output_alone(tmp_path):
    """VMs, nodeinfo, basesync, fencing topology and alerts: nothing but ravada-cib --apply."""
    path = empty_cib(tmp_path / "cib.xml")
    steps = [["cluster-options"], ["rsc-defaults"], ["nodeinfo-clone"], ["basesync-clone", "source=node1"],
             ["fence-rbd", f"nodes={' '.join(NODES)}"], ["alert"]]
    for number, node in enumerate(NODES, 1):
        steps.append(["fence-ipmi", f"id=fence-ipmi-{node}", f"node={node}", f"ip=192.0.2.{number}",
                      "username=admin", "password=pw"])
        steps.append(["fencing-topology", f"node={node}", f"power_device=fence-ipmi-{node}"])
    steps += [["vm", "id=web", "config=/etc/libvirt/qemu/web.xml", "memory=2048", "cpu=2", "priority=10"],
              ["vm", "id=desk1", "config=/etc/libvirt/qemu/desk1.xml", "memory=1024", "base=deb12", "user=alice"]]
    for step in steps:
        cib_tool("render", *step, "--apply", cib_file=path, check=True)
    result = verify(path)
    assert result.returncode == 0, result.stdout + result.stderr
    cib = etree.parse(path).getroot()
    assert {l.get("target") + ":" + l.get("index") + ":" + l.get("devices") for l in cib.iter("fencing-level")} == \
        {f"{n}:1:fence-ipmi-{n}" for n in NODES} | {f"{n}:2:fence-rbd" for n in NODES}
    assert cib.find("configuration/alerts/alert").get("path") == "/usr/share/pacemaker/alerts/ravada_alert"
    assert {c.get("id") for c in cib.iter("clone")} == {"nodeinfo-clone", "basesync-clone"}
    assert {p.get("id") for p in cib.iterfind(".//primitive[@type='VirtualDomain']")} == {"web", "desk1"}
    assert cib.find(".//rsc_location[@id='desk1-needs-base']") is not None
    props = {nv.get("name"): nv.get("value") for nv in cib.iterfind(".//cluster_property_set/nvpair")}
    assert props["placement-strategy"] == "balanced" and props["stonith-enabled"] == "true"
    # Pacemaker's scheduler on that configuration: desk1 only where its base is.
    env = {**os.environ, "CIB_file": path}
    subprocess.run(["crm_attribute", "--type", "nodes", "--node", "node2", "--name", "ravada-base-deb12",
                    "--update", "1"], env=env, check=True, capture_output=True)
    sim = subprocess.run(["crm_simulate", "--xml-file", path, "--simulate", "--node-up", "node1",
                          "--node-up", "node2", "--node-up", "node3", "--show-scores"],
                         capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr
    scores = [line for line in sim.stdout.splitlines() if "desk1 allocation score" in line]
    assert any("node1: -INFINITY" in line for line in scores), scores
    assert any("node3: -INFINITY" in line for line in scores), scores
    assert not any("node2: -INFINITY" in line for line in scores), scores


def test_library_render_and_merge_without_the_tool():
    template = cibtemplates.templates()["fencing-topology"]
    fragment = cibtemplates.render(template, {"node": "n1", "power_device": "p1"})
    assert [e.get("index") for e in fragment.iter("fencing-level")] == ["1", "2"]
    with pytest.raises(cibtemplates.VariableError, match="'power_device'"):
        cibtemplates.render(template, {"node": "n1"})
    cib = etree.fromstring(subprocess.run(["cibadmin", "--empty"], capture_output=True, check=True).stdout)
    merged = cibtemplates.merge(cib, fragment)
    again = cibtemplates.merge(merged, cibtemplates.render(template, {"node": "n1", "power_device": "p2"}))
    assert [e.get("devices") for e in again.iter("fencing-level")] == ["p2", "fence-rbd"]
    # No device p2 exists: crm_verify through the pacemaker module says the levels are wrong.
    valid, messages = pacemaker.verify_cib(again, Deadline(60))
    assert not valid and messages
