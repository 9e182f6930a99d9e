"""A VM's size from its libvirt domain XML, counted as ocf:ravada:VirtualDomain publishes it."""
from __future__ import annotations

from .inputs import DOMAIN_LIMIT, parse_xml, read_regular_file
from .model import InputError, require_int

# libvirt's memory units in bytes (libvirt rounds the result up to whole KiB).
MEMORY_UNITS_BYTES = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000 ** 2,
                      "m": 1024 ** 2, "mib": 1024 ** 2, "gb": 1000 ** 3, "g": 1024 ** 3, "gib": 1024 ** 3,
                      "tb": 1000 ** 4, "t": 1024 ** 4, "tib": 1024 ** 4}


def domain_size(name: str, config: str | None) -> tuple[int, int]:
    """(vCPUs, MiB) of VM `name` from the libvirt domain XML named by the agent's `config`
    parameter, counted as the VM agent publishes them: the current vCPUs (1 when <vcpu> is
    absent, as libvirt defaults) and <memory> in whole MiB, rounded down."""
    if not config:
        raise InputError(f"VM {name}: no utilization cpu/hv_memory and no config parameter to read them from")
    domain = parse_xml(read_regular_file(config, DOMAIN_LIMIT), f"VM {name}: domain XML {config}", DOMAIN_LIMIT)
    vcpu_el, memory_el = domain.find("vcpu"), domain.find("memory")
    if memory_el is None:
        raise InputError(f"VM {name}: domain XML {config} lacks <memory>")
    vcpus = 1
    if vcpu_el is not None:
        text = vcpu_el.get("current") or (vcpu_el.text or "").strip()
        vcpus = require_int(text, f"VM {name} domain vcpu", maximum=16384)
    unit = memory_el.get("unit", "KiB").strip().lower()
    if unit not in MEMORY_UNITS_BYTES:
        raise InputError(f"VM {name}: unknown memory unit {unit!r} in {config}")
    amount = require_int((memory_el.text or "").strip(), f"VM {name} domain memory")
    kib = -(-amount * MEMORY_UNITS_BYTES[unit] // 1024)
    return vcpus, kib // 1024
