"""place --apply writes, with the constraints and in the same CIB update, the utilization
ocf:ravada:VirtualDomain would write at its first start: only what a VM lacks and the agent
would set.  Real cibadmin, crm_diff and crm_verify on a CIB file (CIB_file)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lxml import etree

from placement_helpers import TOOL, require_pacemaker_tools
from ravada_placement import cibgen
from ravada_placement.model import Cluster, Node


def vm(resources: etree._Element, name: str, config: Path, params: dict[str, str] = {},
       utilization: dict[str, str] = {}, provider: str = "ravada") -> None:
    primitive = etree.SubElement(resources, "primitive", id=name, type="VirtualDomain", provider=provider,
                                 **{"class": "ocf"})
    attrs = etree.SubElement(primitive, "instance_attributes", id=f"{name}-ia")
    for key, value in {"config": str(config), **params}.items():
        etree.SubElement(attrs, "nvpair", id=f"{name}-ia-{key}", name=key, value=value)
    if utilization:
        block = etree.SubElement(primitive, "utilization", id=f"{name}-admin-u")
        for key, value in utilization.items():
            etree.SubElement(block, "nvpair", id=f"{name}-admin-u-{key}", name=key, value=value)


def utilization(root: etree._Element, name: str) -> dict[str, str]:
    return {nv.get("name"): nv.get("value") for nv in
            root.iterfind(f"configuration/resources/primitive[@id='{name}']/utilization/nvpair")}


def test_apply_adds_the_sizes_the_agent_would_write_in_the_same_update(tmp_path):
    require_pacemaker_tools()
    config = tmp_path / "vm.xml"
    config.write_text("<domain type='kvm'><name>v</name><vcpu current='2'>4</vcpu>"
                      "<memory unit='GiB'>1</memory></domain>")
    cib = cibgen.live_like_cib(Cluster({"n1": Node("n1", 8, 16384), "n2": Node("n2", 8, 16384)}, {}),
                               "utilization")
    resources = cib.find("configuration/resources")
    vm(resources, "fresh", config)
    vm(resources, "nohost", config, params={"autoset_utilization_host_memory": "no"})
    vm(resources, "admin", config, utilization={"cpu": "3"})
    vm(resources, "other", config, provider="heartbeat")     # not our agent: its defaults are not ours
    path = tmp_path / "cib.xml"
    path.write_bytes(etree.tostring(cib))
    epoch = int(cib.get("epoch"))

    proc = subprocess.run(["/usr/bin/python3", str(TOOL), "place", "--apply"], capture_output=True, text=True,
                          env=dict(os.environ, CIB_file=str(path)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "utilization of 3 VM(s) added" in proc.stdout
    after = etree.parse(str(path)).getroot()
    assert int(after.get("epoch")) == epoch + 1, "constraints and sizes are one CIB update"
    assert utilization(after, "fresh") == {"cpu": "2", "hv_memory": "1024", "host_memory": "1024"}
    assert utilization(after, "nohost") == {"cpu": "2", "hv_memory": "1024"}
    assert utilization(after, "admin") == {"cpu": "3", "hv_memory": "1024", "host_memory": "1024"}
    assert after.find("configuration/resources/primitive[@id='admin']/utilization").get("id") == "admin-admin-u"
    assert utilization(after, "other") == {}
    assert {loc.get("rsc") for loc in after.iterfind("configuration/constraints/rsc_location")} >= {
        "fresh", "nohost", "admin", "other"}
    verified = subprocess.run(["crm_verify", "--xml-file", str(path)], capture_output=True, text=True)
    assert "utilization" not in verified.stderr, verified.stderr
