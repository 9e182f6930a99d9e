"""What the agents need to know from a libvirt domain XML, read with lxml.

Parsed with safexml: a DOCTYPE or entity would make us read another domain than libvirt
creates (`<name>test&x;</name>`), so such a document is refused, as is one over the cap.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import safexml

GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
_MEMORY_UNITS_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "kb": 1000 / 1024, "k": 1, "kib": 1,
                     "mb": 1000 ** 2 / 1024, "m": 1024, "mib": 1024,
                     "gb": 1000 ** 3 / 1024, "g": 1024 ** 2, "gib": 1024 ** 2,
                     "tb": 1000 ** 4 / 1024, "t": 1024 ** 3, "tib": 1024 ** 3}


MAX_BYTES = 4 * 1024 * 1024


class DomainXmlError(ValueError):
    pass


class DomainConfig(NamedTuple):
    name: str
    uuid: str | None
    vcpus: int | None
    memory_kib: int | None
    pools: frozenset[str]
    networks: frozenset[str]
    has_guest_agent: bool
    has_rbd: bool
    has_secrets: bool = False  # passwords (VNC/SPICE passwd): only in XML read with _SECURE


def _memory_kib(element) -> int | None:
    if element is None or not (element.text or "").strip():
        return None
    unit = element.get("unit", "KiB").lower()
    if unit not in _MEMORY_UNITS_KIB:
        raise DomainXmlError(f"unknown memory unit '{element.get('unit')}'")
    return int(int(element.text.strip()) * _MEMORY_UNITS_KIB[unit])


def parse(xml: str | bytes) -> DomainConfig:
    """Parse a domain definition; DomainXmlError says what is wrong with it."""
    try:
        root = safexml.parse(xml, "the domain XML", limit=MAX_BYTES)
    except safexml.UnsafeXml as err:
        raise DomainXmlError(str(err).removeprefix("the domain XML is ")) from None
    if root.tag != "domain":
        raise DomainXmlError(f"root element is <{root.tag}>, not <domain>")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainXmlError("no <name> in the domain XML")
    vcpu_text = (root.findtext("vcpu") or "").strip()
    try:
        vcpus = int(vcpu_text) if vcpu_text else None
        memory = _memory_kib(root.find("memory"))
    except ValueError as err:
        raise DomainXmlError(f"bad number in <vcpu> or <memory>: {err}") from None
    pools = {s.get("pool") for s in root.iterfind("devices/disk[@type='volume']/source") if s.get("pool")}
    networks = {s.get("network") for s in root.iterfind("devices/interface[@type='network']/source")
                if s.get("network")}
    agent = any(t.get("name") == GUEST_AGENT_CHANNEL for t in root.iterfind("devices/channel/target"))
    rbd = any(s.get("protocol") == "rbd" for s in root.iterfind("devices/disk[@type='network']/source"))
    return DomainConfig(
        name=name,
        uuid=(root.findtext("uuid") or "").strip().lower() or None,
        vcpus=vcpus,
        memory_kib=memory,
        pools=frozenset(pools),
        networks=frozenset(networks),
        has_guest_agent=agent,
        has_rbd=rbd,
        has_secrets=bool(root.xpath("//@passwd | //@password")),
    )
