"""Utilization autoset through Pacemaker's own crm_resource, on a CIB file (CIB_file):
written at start and when the domain changes, not rewritten by every monitor."""
import subprocess
import uuid

import pytest
from lxml import etree

from support.libvirt_node import domain_xml

pytestmark = pytest.mark.libvirt


def cib(env, *argv):
    return subprocess.run(list(argv), env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_utilization_follows_the_domain_and_is_written_only_on_change(node, tmp_path):
    name = f"u{uuid.uuid4().hex[:8]}"
    config = tmp_path / f"{name}.xml"
    config.write_text(domain_xml(name, memory_mib=96, vcpus=2).replace("<vcpu>2</vcpu>",
                                                                       "<vcpu current='1'>2</vcpu>"))
    cib_file = tmp_path / "cib.xml"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CIB_file": str(cib_file)}
    cib_file.write_text(cib(env, "cibadmin", "--empty"))
    cib(env, "cibadmin", "--create", "-o", "resources", "--xml-text",
        f'<primitive id="{name}" class="ocf" provider="ravada" type="VirtualDomain"/>')
    pacemaker = {"CIB_file": str(cib_file), "OCF_RESKEY_crm_feature_set": "3.16.2",
                 "OCF_RESOURCE_INSTANCE": name}

    def utilization(attr):
        return cib(env, "crm_resource", "--resource", name, "--utilization", "--get-parameter", attr)

    def epoch():
        return int(etree.fromstring(cib(env, "cibadmin", "--query").encode()).get("epoch"))

    params = {"config": str(config)}
    monitor = {"interval": "10000", "timeout": "20000"}
    try:
        before = epoch()
        assert node.agent("start", params, {"timeout": "60000"}, env=pacemaker).returncode == 0
        assert (utilization("cpu"), utilization("hv_memory"), utilization("host_memory")) == ("1", "96", "96")
        assert epoch() == before + 1, "the three values are written in one CIB update"

        # Started again (as on a node that never ran it): the CIB is right, nothing is written.
        assert node.agent("stop", params, {"timeout": "20000"}, env=pacemaker).returncode == 0
        assert node.agent("start", params, {"timeout": "60000"}, env=pacemaker).returncode == 0
        assert epoch() == before + 1

        # An admin's edit survives monitors: they do not rewrite unchanged values.
        cib(env, "crm_resource", "--resource", name, "--utilization", "--set-parameter", "cpu",
            "--parameter-value", "7")
        assert node.agent("monitor", params, monitor, env=pacemaker).returncode == 0
        assert utilization("cpu") == "7"

        # The domain changes: the next monitor writes the new value.
        conn = node.connect()
        try:
            conn.lookupByName(name).setVcpusFlags(2, 1)  # VIR_DOMAIN_AFFECT_LIVE
        finally:
            conn.close()
        assert node.agent("monitor", params, monitor, env=pacemaker).returncode == 0
        assert utilization("cpu") == "2"

        # autoset off and unset on: the attribute goes.
        unset = {**params, "autoset_utilization_hv_memory": "false", "unset_utilization_hv_memory": "true"}
        assert node.agent("reload-agent", unset, {"timeout": "10000"}, env=pacemaker).returncode == 0
        missing = subprocess.run(["crm_resource", "--resource", name, "--utilization", "--get-parameter",
                                  "hv_memory"], env=env, capture_output=True, text=True)
        assert missing.returncode != 0 or missing.stdout.strip() == ""
    finally:
        node.agent("stop", {**params, "force_stop": "1"}, {"timeout": "20000"})


def test_migrate_from_fails_in_time_when_the_domain_never_arrives(node, tmp_path):
    config = tmp_path / "ghost.xml"
    config.write_text(domain_xml("neverarrives"))
    done = node.agent("migrate_from", {"config": str(config)}, {"timeout": "4000", "migrate_source": "nodeX"},
                      timeout=20)
    assert done.returncode == 1
    assert "ocf-exit-reason:neverarrives did not arrive running here" in done.stderr


def test_start_resources_starts_the_storage_pool_the_domain_uses(node, tmp_path):
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    pool_name = f"p{uuid.uuid4().hex[:6]}"
    conn = node.connect()

    pool = etree.Element("pool", type="dir")
    etree.SubElement(pool, "name").text = pool_name
    etree.SubElement(etree.SubElement(pool, "target"), "path").text = str(pool_dir)
    defined = conn.storagePoolDefineXML(etree.tostring(pool).decode(), 0)
    defined.create(0)
    volume = etree.Element("volume")
    etree.SubElement(volume, "name").text = "disk.img"
    etree.SubElement(volume, "capacity", unit="MiB").text = "1"
    defined.createXML(etree.tostring(volume).decode(), 0)
    defined.destroy()  # inactive now: only start_resources can bring it back
    name = f"s{uuid.uuid4().hex[:6]}"
    config = tmp_path / f"{name}.xml"
    disk = (f"<disk type='volume' device='disk'><driver name='qemu' type='raw'/>"
            f"<source pool='{pool_name}' volume='disk.img'/><target dev='vdb' bus='virtio'/></disk>")
    config.write_text(domain_xml(name, extra_devices=disk))
    try:
        without = node.agent("start", {"config": str(config)}, {"timeout": "30000"})
        assert without.returncode == 1 and pool_name in without.stderr
        started = node.agent("start", {"config": str(config), "start_resources": "true"}, {"timeout": "30000"})
        assert started.returncode == 0, started.stderr
        assert defined.isActive()
    finally:
        node.agent("stop", {"config": str(config), "force_stop": "1"}, {"timeout": "20000"})
        if defined.isActive():
            defined.destroy()
        defined.undefine()
        conn.close()
