"""Which disks of a libvirt domain are RBD images, read from the domain XML."""
from __future__ import annotations

from dataclasses import dataclass

from .. import safexml
from .errors import BadDiskSpec


@dataclass(frozen=True)
class RbdDisk:
    pool: str
    image: str
    namespace: str = ""
    target: str = ""                         # guest device name, e.g. 'vda' (for messages)
    monitors: tuple[str, ...] = ()           # 'host:port' from <host>, informational
    auth_user: str = ""                      # cephx id QEMU uses (without 'client.')
    secret_uuid: str = ""
    secret_usage: str = ""
    snapshot: str = ""
    config_file: str = ""                    # <config file='...'/>: the ceph.conf QEMU uses
    read_only: bool = False                  # <readonly/>: QEMU opens it read-only (no watch, no lock)
    shareable: bool = False                  # <shareable/>: several writers are intended

    @property
    def spec(self) -> str:
        """'pool/image' or 'pool/namespace/image', as `rbd` and libvirt write it."""
        parts = [self.pool, self.namespace, self.image] if self.namespace else [self.pool, self.image]
        return "/".join(parts)

    @property
    def guarded(self) -> bool:
        """Disks the guard must protect: opened read-write by exactly one VM."""
        return not (self.read_only or self.shareable or self.snapshot)

    @classmethod
    def from_spec(cls, spec: str) -> "RbdDisk":
        """'pool/image', 'pool/namespace/image' (optionally '@snap')."""
        name, _, snap = spec.partition("@")
        parts = name.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise BadDiskSpec(f"RBD image must be POOL/IMAGE or POOL/NAMESPACE/IMAGE, got {spec!r}")
        pool, image = parts[0], parts[-1]
        namespace = parts[1] if len(parts) == 3 else ""
        return cls(pool=pool, image=image, namespace=namespace, snapshot=snap)


def disks_from_domain_xml(xml: str | bytes) -> list[RbdDisk]:
    """Every <disk type='network'> with <source protocol='rbd'> of the domain, in document order.

    Raises BadDiskSpec for XML that does not parse, declares a DOCTYPE/entities, or an RBD
    source without a usable name.
    """
    try:
        root = safexml.parse(xml, "domain XML")
    except safexml.UnsafeXml as exc:
        raise BadDiskSpec(str(exc)) from None
    disks = []
    for disk in root.iterfind("devices/disk[@type='network']"):
        source = disk.find("source[@protocol='rbd']")
        if source is None:
            continue
        name = source.get("name") or ""
        base = RbdDisk.from_spec(name)
        snap = source.find("snapshot")
        snapshot = base.snapshot or (snap.get("name", "") if snap is not None else "")
        config = source.find("config")
        hosts = tuple(f"{h.get('name', '')}:{h.get('port', '6789')}" for h in source.iterfind("host"))
        auth = disk.find("auth")
        if auth is None:                       # libvirt also accepts <auth> inside <source>
            auth = source.find("auth")
        secret = auth.find("secret") if auth is not None else None
        target = disk.find("target")
        disks.append(RbdDisk(
            pool=base.pool, image=base.image, namespace=base.namespace,
            target=target.get("dev", "") if target is not None else "",
            monitors=hosts,
            auth_user=auth.get("username", "") if auth is not None else "",
            secret_uuid=secret.get("uuid", "") if secret is not None else "",
            secret_usage=secret.get("usage", "") if secret is not None else "",
            snapshot=snapshot,
            config_file=config.get("file", "") if config is not None else "",
            read_only=disk.find("readonly") is not None,
            shareable=disk.find("shareable") is not None,
        ))
    return disks
