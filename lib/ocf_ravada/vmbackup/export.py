"""One backup run of a VM: a consistent snapshot, then one export-diff stream per image into
DIR/VM/SNAPSHOT/, incremental from the newest complete backup whose snapshot still exists on
the image, full otherwise; the manifest last."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..deadline import Deadline
from ..rbd import backup
from ..rbd.backup import BackupInvalid, ImageEntry, Manifest, RbdTool
from ..rbd.cluster import CephSession
from ..rbd.errors import RbdError
from ..rbd.snapshot import Snapshots, snapshot_name, taken_at
from .consistent import Outcome, snapshot_vm
from .locate import Vm
from .progress import Progress


@dataclass
class Result:
    directory: Path
    manifest: Manifest
    outcome: Outcome
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.manifest.images)

    @property
    def kind(self) -> str:
        incremental = sum(1 for e in self.manifest.images if e.from_snapshot)
        if incremental == len(self.manifest.images):
            return "incremental"
        return "full" if not incremental else f"mixed ({incremental} incremental)"


def latest_complete(vm_dir: Path) -> tuple[Path, Manifest] | None:
    """The newest backup under `vm_dir` that has a readable manifest (partial ones are skipped)."""
    if not vm_dir.is_dir():
        return None
    for entry in sorted((p for p in vm_dir.iterdir() if taken_at(p.name)), reverse=True):
        try:
            return entry, backup.read_manifest(entry)
        except BackupInvalid:
            continue
    return None


def backup_vm(vm: Vm, session: CephSession, tool: RbdTool, root: Path, deadline: Deadline,
              freeze_limit: float, require_freeze: bool = False, full: bool = False) -> Result:
    began = time.monotonic()
    vm_dir = root / vm.name
    vm_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    previous = None if full else latest_complete(vm_dir)
    snapshots = Snapshots(session)
    name = snapshot_name()
    if (vm_dir / name).exists():
        raise RbdError(f"{vm_dir / name} exists already (two backups in one second?)")
    outcome = snapshot_vm(vm, snapshots, name, deadline, freeze_limit=freeze_limit,
                          require_freeze=require_freeze)
    directory = vm_dir / name
    directory.mkdir(mode=0o700)
    entries: list[ImageEntry] = []
    for index, disk in enumerate(vm.disks):
        base = previous[1] if previous and previous[1].entry(disk.spec) else None
        since = base.snapshot if base and snapshots.exists(disk, base.snapshot) else None
        file = backup.stream_file_name(index, disk, since is not None)
        progress = Progress(f"{disk.spec}{' since ' + since if since else ''}",
                            backup.changed_bytes(session, disk, name, since))
        try:
            size, sha = backup.export(tool, disk, name, since, directory / file, progress)
        finally:
            progress.close()
        entries.append(ImageEntry(disk.spec, backup.image_size(session, disk, name), since, file, size, sha))
    backup.fsync_dir(directory)
    uses_base = any(e.from_snapshot for e in entries)
    manifest = Manifest(vm=vm.name, snapshot=name,
                        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        consistency=outcome.consistency,
                        base=previous[0].name if previous and uses_base else None,
                        images=tuple(entries))
    backup.write_manifest(directory, manifest)
    backup.fsync_dir(vm_dir)                  # the new directory's own entry
    return Result(directory, manifest, outcome, time.monotonic() - began)
