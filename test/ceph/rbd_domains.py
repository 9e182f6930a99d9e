"""The libvirt ceph secret of RBD disks (the disk itself: ravada_lab.microceph.rbd_disk_xml)."""
from __future__ import annotations

import base64
import configparser
import uuid

from lxml import etree

from ravada_lab.microceph import NODE_USER


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
