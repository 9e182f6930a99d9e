"""Tiny disk-less test domains for the lab, their XML kept in the lab's shared directory."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from lxml import etree

from .layout import LabLayout

MEMORY_MIB = 64


def kvm_usable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


def domain_xml(name: str, memory_mib: int = MEMORY_MIB, kvm: bool | None = None) -> bytes:
    """A domain with no disk and no NIC: boots nothing, starts in well under a second, and
    migrates in a blink — enough to prove placement, migration and fencing."""
    kvm = kvm_usable() if kvm is None else kvm
    domain = etree.Element("domain", type="kvm" if kvm else "qemu")
    etree.SubElement(domain, "name").text = name
    etree.SubElement(domain, "uuid").text = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ravada-lab:{name}"))
    etree.SubElement(domain, "memory", unit="MiB").text = str(memory_mib)
    etree.SubElement(domain, "vcpu").text = "1"
    os_el = etree.SubElement(domain, "os")
    etree.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    etree.SubElement(domain, "on_poweroff").text = "destroy"
    etree.SubElement(domain, "on_reboot").text = "restart"
    etree.SubElement(domain, "on_crash").text = "destroy"
    devices = etree.SubElement(domain, "devices")
    etree.SubElement(devices, "emulator").text = "/usr/bin/qemu-system-x86_64"
    etree.SubElement(devices, "memballoon", model="none")
    return etree.tostring(domain, pretty_print=True)


def write_domain(lab: LabLayout, name: str, memory_mib: int = MEMORY_MIB) -> Path:
    path = lab.shared_dir / f"{name}.xml"
    path.write_bytes(domain_xml(name, memory_mib))
    return path
