"""libvirt domains whose disk is an RBD image, authenticated with a libvirt ceph secret."""
from __future__ import annotations

import base64
import configparser
import uuid

from lxml import etree

from microceph import NODE_USER


def ceph_secret(conn, ceph) -> str:
    keyring = configparser.ConfigParser()
    keyring.read(ceph.keyring(NODE_USER))
    secret = etree.Element("secret", ephemeral="no", private="yes")
    secret_uuid = str(uuid.uuid4())
    etree.SubElement(secret, "uuid").text = secret_uuid
    usage = etree.SubElement(secret, "usage", type="ceph")
    etree.SubElement(usage, "name").text = f"client.{NODE_USER} {secret_uuid}"
    handle = conn.secretDefineXML(etree.tostring(secret).decode())
    handle.setValue(base64.b64decode(keyring[f"client.{NODE_USER}"]["key"]))
    return secret_uuid


def rbd_disk_xml(ceph, spec: str, secret_uuid: str) -> str:
    disk = etree.Element("disk", type="network", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type="raw", cache="none")
    source = etree.SubElement(disk, "source", protocol="rbd", name=spec)
    etree.SubElement(source, "host", name=ceph.mon_ip, port="6789")
    etree.SubElement(source, "config", file=str(ceph.conf))
    auth = etree.SubElement(disk, "auth", username=NODE_USER)
    etree.SubElement(auth, "secret", type="ceph", uuid=secret_uuid)
    etree.SubElement(disk, "target", dev="vda", bus="virtio")
    return etree.tostring(disk).decode()
