"""Pure parsing: domain XML disks, Ceph addresses, node maps, fencing history (no cluster)."""
from __future__ import annotations

import pytest

from ocf_ravada.rbd import BadDiskSpec, ClientAddr, NodeMap, RbdDisk, disks_from_domain_xml
from ocf_ravada.rbd.nodes import fenced_in_history, node_online

DOMAIN = """<domain type='kvm'><name>vm1</name><devices>
  <disk type='file' device='disk'><source file='/var/lib/libvirt/images/x.qcow2'/><target dev='vdz'/></disk>
  <disk type='network' device='disk'>
    <driver name='qemu' type='raw'/>
    <auth username='libvirt'><secret type='ceph' uuid='0f4b6fe2-6a36-4d4a-9f7c-2f0d1b3a5c11'/></auth>
    <source protocol='rbd' name='vmpool/vm1-root'>
      <host name='10.0.0.1' port='6789'/><host name='10.0.0.2'/>
      <config file='/etc/ceph/ceph.conf'/>
    </source>
    <target dev='vda' bus='virtio'/>
  </disk>
  <disk type='network' device='disk'>
    <source protocol='rbd' name='vmpool/tenant1/vm1-data'>
      <auth username='libvirt'><secret type='ceph' usage='client.libvirt secret'/></auth>
    </source>
    <target dev='vdb' bus='virtio'/>
  </disk>
  <disk type='network' device='cdrom'>
    <source protocol='rbd' name='isos/install@v1'/><target dev='sda'/><readonly/>
  </disk>
  <disk type='network' device='disk'>
    <source protocol='rbd' name='shared/quorum'/><target dev='vdc'/><shareable/>
  </disk>
  <disk type='network' device='disk'><source protocol='nbd' name='foo'/><target dev='vdd'/></disk>
</devices></domain>"""


def test_rbd_disks_are_read_from_domain_xml():
    root, data, iso, shared = disks_from_domain_xml(DOMAIN)
    assert (root.pool, root.namespace, root.image, root.target) == ("vmpool", "", "vm1-root", "vda")
    assert root.monitors == ("10.0.0.1:6789", "10.0.0.2:6789")
    assert root.auth_user == "libvirt" and root.secret_uuid.startswith("0f4b6fe2")
    assert root.config_file == "/etc/ceph/ceph.conf"
    assert root.guarded and root.spec == "vmpool/vm1-root"
    assert (data.namespace, data.image, data.spec) == ("tenant1", "vm1-data", "vmpool/tenant1/vm1-data")
    assert data.secret_usage == "client.libvirt secret"
    assert iso.snapshot == "v1" and iso.read_only and not iso.guarded
    assert shared.shareable and not shared.guarded


def test_domain_without_rbd_disks_and_bad_xml():
    assert disks_from_domain_xml("<domain><devices/></domain>") == []
    with pytest.raises(BadDiskSpec):
        disks_from_domain_xml("<domain><devices>")
    with pytest.raises(BadDiskSpec):
        disks_from_domain_xml("<domain><devices><disk type='network'><source protocol='rbd' name='noslash'/>"
                              "</disk></devices></domain>")


@pytest.mark.parametrize("spec", ["", "pool", "pool/", "/img", "a/b/c/d"])
def test_bad_image_specs_are_refused(spec):
    with pytest.raises(BadDiskSpec):
        RbdDisk.from_spec(spec)


@pytest.mark.parametrize("text, ip, nonce, back", [
    ("10.0.0.5:0/3141592653", "10.0.0.5", 3141592653, "10.0.0.5:0/3141592653"),
    ("v1:10.0.0.5:0/7", "10.0.0.5", 7, "10.0.0.5:0/7"),
    ("any:10.0.0.5:0/0", "10.0.0.5", 0, "10.0.0.5:0/0"),
    ("[fd00::5]:0/9", "fd00::5", 9, "[fd00::5]:0/9"),
    ("[v2:10.0.0.5:3300/1,v1:10.0.0.5:6789/1]", "10.0.0.5", 1, "10.0.0.5:3300/1"),
])
def test_client_addresses(text, ip, nonce, back):
    addr = ClientAddr.parse(text)
    assert (addr.ip, addr.nonce, str(addr)) == (ip, nonce, back)


def test_garbage_address_is_an_error():
    with pytest.raises(BadDiskSpec):
        ClientAddr.parse("node1")


def test_node_map_from_parameter():
    nodes = NodeMap.parse("node1:10.0.0.11,10.0.1.11; node2=10.0.0.12")
    assert nodes.ips_of("node1") == ("10.0.0.11", "10.0.1.11")
    assert nodes.node_of(ClientAddr.parse("10.0.1.11:0/5")) == "node1"
    assert nodes.node_of("10.0.0.99") is None
    with pytest.raises(BadDiskSpec):
        NodeMap.parse("node1:not-an-ip")


def test_node_map_from_cib_attributes():
    cib = """<cib><configuration><nodes>
      <node id="1" uname="node1"><instance_attributes id="n1">
        <nvpair id="n1-a" name="ravada-ceph-addrs" value="10.0.0.11 10.0.1.11"/></instance_attributes></node>
      <node id="2" uname="node2"/>
    </nodes></configuration><status>
      <node_state id="2" uname="node2"><transient_attributes id="2"><instance_attributes id="s2">
        <nvpair id="s2-a" name="ravada-ceph-addrs" value="10.0.0.12"/></instance_attributes>
      </transient_attributes></node_state>
    </status></cib>"""
    nodes = NodeMap.from_cib_xml(cib)
    assert nodes.ips_by_node == {"node1": ("10.0.0.11", "10.0.1.11"), "node2": ("10.0.0.12",)}


def test_fencing_history():
    history = """<pacemaker-result api-version="2.30" request="stonith_admin --history node2 --output-as=xml">
      <fence_history>
        <fence_event action="reboot" target="node2" client="pacemaker-controld.123" origin="node1"
                     status="success" delegate="node3" completed="2026-11-21 10:00:00Z"/>
        <fence_event action="off" target="node4" status="failed"/>
      </fence_history><status code="0" message="OK"/></pacemaker-result>"""
    assert "reboot of node2 by node3" in fenced_in_history(history, "node2")
    assert fenced_in_history(history, "node4") is None


def test_node_online_from_crm_mon():
    status = """<pacemaker-result api-version="2.30" request="crm_mon --output-as=xml"><nodes>
      <node name="node1" id="1" online="true" standby="false" type="member"/>
      <node name="node2" id="2" online="false" standby="false" type="member"/>
    </nodes></pacemaker-result>"""
    assert node_online(status, "node1") is True
    assert node_online(status, "node2") is False
    assert node_online(status, "node9") is None
