"""Find a VM: the libvirt that runs it (Pacemaker tells where, or the admin gives --uri), its
domain and its RBD disks."""
from __future__ import annotations

from dataclasses import dataclass

import libvirt

from .. import pacemaker
from ..deadline import Deadline
from ..rbd.disks import RbdDisk, disks_from_domain_xml
from ..rbd.errors import RbdError
from ..virt.connection import Hypervisor

LOCAL_URI = "qemu:///system"
DEFAULT_URI_TEMPLATE = "qemu+ssh://{node}/system"


class NotFound(RbdError):
    """The VM, its node or its disks cannot be found."""


@dataclass
class Vm:
    name: str
    hv: Hypervisor | None                 # None: not running in the cluster, no --uri given
    domain: libvirt.virDomain | None      # None: not defined where we looked
    disks: list[RbdDisk]
    node: str | None = None               # where Pacemaker says it runs

    @property
    def running(self) -> bool:
        return self.domain is not None and self.hv is not None and \
            self.hv.call(f"asking whether {self.name} runs", self.domain.isActive) == 1

    def close(self) -> None:
        if self.hv is not None:
            self.hv.close()


def hypervisor_uri(resource: str, deadline: Deadline, template: str) -> tuple[str | None, str | None]:
    """(libvirt URI, node) of the node where Pacemaker runs `resource`; (None, None) when it
    runs nowhere.  The local node is reached without ssh."""
    try:
        nodes = pacemaker.resource_nodes(pacemaker.cluster_status(deadline, limit=15), resource)
        if not nodes:
            return None, None
        if len(nodes) > 1:
            raise NotFound(f"{resource} is active on several nodes ({', '.join(nodes)}): refusing")
        local = pacemaker.local_node(deadline, limit=10)
    except pacemaker.PacemakerError as err:
        raise NotFound(f"cannot ask Pacemaker where {resource} runs ({err.reason}); give --uri") from None
    node = nodes[0]
    return (LOCAL_URI if node == local else template.format(node=node)), node


def find_vm(name: str, deadline: Deadline, uri: str | None = None, resource: str | None = None,
            uri_template: str = DEFAULT_URI_TEMPLATE, disk_specs: list[str] | None = None) -> Vm:
    """The VM `name` (libvirt domain name; Pacemaker resource `resource`, default the same).
    `disk_specs` (POOL/IMAGE) replace the disks read from the domain XML."""
    node = None
    if uri is None:
        uri, node = hypervisor_uri(resource or name, deadline, uri_template)
    hv = Hypervisor.connect(uri, deadline) if uri else None
    domain = hv.lookup(name) if hv else None
    if disk_specs:
        disks = [RbdDisk.from_spec(spec) for spec in disk_specs]
    elif domain is not None:
        xml = hv.call(f"reading the XML of {name}", domain.XMLDesc, 0)
        disks = [d for d in disks_from_domain_xml(xml) if not d.snapshot and not d.read_only]
    else:
        if hv:
            hv.close()
        where = f"at {uri}" if uri else "running in the cluster"
        raise NotFound(f"no domain {name} {where}: give --uri, or its images with --disk")
    if not disks:
        if hv:
            hv.close()
        raise NotFound(f"{name} has no writable RBD disk")
    return Vm(name, hv, domain, disks, node)
