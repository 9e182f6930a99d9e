"""ocf:ravada:nodeinfo against a real libvirtd + QEMU, publishing into a real CIB file
(crm_attribute with CIB_file, the same tool and code path as on a live cluster)."""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import libvirt
import psutil
import pytest
from lxml import etree

from support.libvirt_node import AGENT_DIR, domain_xml
from support.stack import require_stack

pytestmark = pytest.mark.libvirt

AGENT = os.path.join(AGENT_DIR, "nodeinfo")
MONITOR = {"interval": "60000", "timeout": "20000"}


@pytest.fixture
def cib_file(node, tmp_path) -> str:
    """A CIB in which the test node is a cluster member (has a node_state)."""
    require_stack("nodeinfo CIB tests", "crm_simulate", "crm_attribute")
    source, cib = tmp_path / "empty.xml", tmp_path / "cib.xml"
    source.write_text(
        '<cib validate-with="pacemaker-3.0" epoch="1" num_updates="0" admin_epoch="0" have-quorum="1">'
        '<configuration><crm_config/><nodes><node id="1" uname="%s"/></nodes><resources/><constraints/>'
        '</configuration><status/></cib>' % node.name)
    subprocess.run(["crm_simulate", "--xml-file", str(source), "--node-up", node.name, "--save-output", str(cib)],
                   check=True, capture_output=True)
    return str(cib)


@pytest.fixture
def domains(node):
    """Start tiny guests on the node; every one is destroyed afterwards."""
    conn = node.connect()
    started = []

    def start(memory_mib: int, vcpus: int):
        dom = conn.createXML(domain_xml(f"ni{uuid.uuid4().hex[:8]}", memory_mib=memory_mib, vcpus=vcpus))
        started.append(dom)
        return dom

    yield start
    for dom in started:
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass
    conn.close()


def agent(node, action, cib, meta=None, **params):
    return node.agent(action, {"storage_paths": "/tmp", **params}, {"on_node": node.name, **(meta or {})},
                      env={"CIB_file": cib, "OCF_RESOURCE_INSTANCE": "nodeinfo:0"}, agent=AGENT)


def published(cib: str, node_name: str) -> tuple[dict[str, int], dict[str, int]]:
    root = etree.parse(cib).getroot()
    utilization = {nv.get("name"): int(nv.get("value"))
                   for nv in root.iterfind(f"configuration/nodes/node[@uname='{node_name}']/utilization/nvpair")}
    attributes = {nv.get("name"): int(nv.get("value")) for nv in root.iterfind(
        f"status/node_state[@uname='{node_name}']/transient_attributes/instance_attributes/nvpair")}
    return utilization, attributes


def running_domains(node) -> tuple[int, int, int]:
    conn = node.connect()
    try:
        infos = [dom.info() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    finally:
        conn.close()
    return len(infos), sum(i[3] for i in infos), sum(i[1] for i in infos) // 1024


def test_start_publishes_capacity_minus_reserves_and_running_domains(node, cib_file, domains):
    domains(64, 1)
    domains(96, 2)
    try:
        proc = agent(node, "start", cib_file, {"timeout": "30000"}, cpu_ratio="2", reserve_memory="512")
        assert proc.returncode == 0, proc.stderr
        utilization, attributes = published(cib_file, node.name)
        capacity = psutil.virtual_memory().total // 2**20 - 512
        assert utilization == {"cpu": psutil.cpu_count() * 2, "hv_memory": capacity, "host_memory": capacity}
        count, vcpus, memory = running_domains(node)
        assert count >= 2
        assert (attributes["ravada-vms"], attributes["ravada-vms-vcpus"], attributes["ravada-vms-memory"]) == \
            (count, vcpus, memory)
        assert attributes["ravada-cpus"] == psutil.cpu_count()
        assert attributes["ravada-storage-full"] in (0, 1) and attributes["ravada-storage-free"] > 0
    finally:
        agent(node, "stop", cib_file)


def test_monitor_writes_only_what_changed(node, cib_file, domains):
    domains(64, 1)
    second = domains(64, 2)
    try:
        assert agent(node, "start", cib_file, change_threshold="50").returncode == 0
        before = Path(cib_file).read_bytes()
        assert agent(node, "monitor", cib_file, MONITOR, change_threshold="50").returncode == 0
        assert Path(cib_file).read_bytes() == before          # nothing moved: no CIB write
        count_before = published(cib_file, node.name)[1]["ravada-vms"]
        second.destroy()
        assert agent(node, "monitor", cib_file, MONITOR, change_threshold="50").returncode == 0
        _, attributes = published(cib_file, node.name)
        count, vcpus, _memory = running_domains(node)
        assert attributes["ravada-vms"] == count == count_before - 1
        assert attributes["ravada-vms-vcpus"] == vcpus
        assert agent(node, "monitor", cib_file, {"interval": "0"}).returncode == 0     # probe
    finally:
        agent(node, "stop", cib_file)
    assert agent(node, "monitor", cib_file, MONITOR).returncode == 7


def test_nearly_full_storage_is_flagged(node, cib_file, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    # A 4 MiB tmpfs inside the node's private mount namespace only.
    node.run_in(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        node.run_in(["dd", "if=/dev/zero", f"of={small}/fill", "bs=1M", "count=2", "status=none"], check=True)
        assert agent(node, "start", cib_file, storage_paths=str(small)).returncode == 0
        assert published(cib_file, node.name)[1]["ravada-storage-full"] == 0
        node.run_in(["dd", "if=/dev/zero", f"of={small}/fill2", "bs=1M", "count=2", "status=none"], check=False)
        assert agent(node, "monitor", cib_file, MONITOR, storage_paths=str(small)).returncode == 0
        _, attributes = published(cib_file, node.name)
        assert attributes["ravada-storage-full"] == 1 and attributes["ravada-storage-free"] <= 1
    finally:
        agent(node, "stop", cib_file)
        node.run_in(["umount", str(small)], check=True)


def test_hung_libvirtd_does_not_hang_the_monitor(node, cib_file):
    assert agent(node, "start", cib_file).returncode == 0
    node.freeze_libvirtd()
    try:
        began = time.monotonic()
        proc = agent(node, "monitor", cib_file, {"interval": "60000", "timeout": "6000"})
        elapsed = time.monotonic() - began
    finally:
        node.thaw_libvirtd()
        agent(node, "stop", cib_file)
    assert proc.returncode == 0, proc.stderr
    assert "libvirt not asked" in proc.stderr
    assert elapsed < 6.0
