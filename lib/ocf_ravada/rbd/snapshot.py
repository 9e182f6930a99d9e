"""Snapshots of a set of RBD images taken together: one name, a UTC timestamp in it.

Our snapshots are named `ravada-YYYYMMDDTHHMMSSZ`; other snapshots on the images are never
listed, pruned or deleted here.  An image is opened only for the moment one call needs (a
monitor that sees our client watching a VM's disk for longer would call it a split brain).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

import rbd

from .cluster import CephSession, wrap
from .disks import RbdDisk
from .errors import RbdError

PREFIX = "ravada-"
_NAME = re.compile(r"^ravada-(\d{8}T\d{6}Z)$")
_FORMAT = "%Y%m%dT%H%M%SZ"


def snapshot_name(when: datetime | None = None) -> str:
    """`ravada-` + the UTC time, to the second (sorts as it was taken)."""
    return PREFIX + (when or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime(_FORMAT)


def taken_at(name: str) -> datetime | None:
    """The UTC time in one of our snapshot names; None for any other name."""
    match = _NAME.match(name)
    return datetime.strptime(match.group(1), _FORMAT).replace(tzinfo=timezone.utc) if match else None


@dataclass
class SnapshotSet:
    """One of our snapshot names and the images that have it."""
    name: str
    taken: datetime
    images: dict[str, int] = field(default_factory=dict)     # image spec -> size at the snapshot

    def complete(self, disks: Iterable[RbdDisk]) -> bool:
        return all(d.spec in self.images for d in disks)


class Snapshots:
    """Create, list and delete our snapshots on a VM's images through one CephSession."""

    def __init__(self, session: CephSession) -> None:
        self.session = session

    @contextmanager
    def _image(self, disk: RbdDisk, read_only: bool = False) -> Iterator[rbd.Image]:
        io = self.session.ioctx(disk.pool, disk.namespace)
        try:
            image = rbd.Image(io, disk.image, read_only=read_only)
        except rbd.Error as exc:
            raise wrap(exc, f"opening RBD image {disk.spec}") from exc
        try:
            yield image
        finally:
            image.close()

    def create(self, disks: list[RbdDisk], name: str) -> None:
        """Snapshot every image as `name`.  All or nothing: when one fails, those already
        taken are removed again and the error is raised."""
        if taken_at(name) is None:
            raise RbdError(f"{name!r} is not a ravada snapshot name ({PREFIX}YYYYMMDDTHHMMSSZ)")
        done: list[RbdDisk] = []
        try:
            for disk in disks:
                with self._image(disk) as image:
                    try:
                        image.create_snap(name)
                    except rbd.ImageExists:
                        raise RbdError(f"{disk.spec} already has a snapshot {name}") from None
                    except rbd.Error as exc:
                        raise wrap(exc, f"snapshotting {disk.spec}") from exc
                done.append(disk)
        except BaseException:
            for disk in done:
                try:
                    self._remove(disk, name)
                except RbdError:
                    pass  # reported by the original error; `list` shows the partial set
            raise

    def list(self, disks: list[RbdDisk]) -> list[SnapshotSet]:
        """Our snapshots on any of the images, oldest first."""
        found: dict[str, SnapshotSet] = {}
        for disk in disks:
            with self._image(disk, read_only=True) as image:
                try:
                    snaps = list(image.list_snaps())
                except rbd.Error as exc:
                    raise wrap(exc, f"listing the snapshots of {disk.spec}") from exc
            for snap in snaps:
                when = taken_at(snap["name"])
                if when is not None:
                    found.setdefault(snap["name"], SnapshotSet(snap["name"], when)).images[disk.spec] = snap["size"]
        return sorted(found.values(), key=lambda s: s.name)

    def exists(self, disk: RbdDisk, name: str) -> bool:
        with self._image(disk, read_only=True) as image:
            try:
                return any(s["name"] == name for s in image.list_snaps())
            except rbd.Error as exc:
                raise wrap(exc, f"listing the snapshots of {disk.spec}") from exc

    def delete(self, disks: list[RbdDisk], name: str) -> list[str]:
        """Remove snapshot `name` from every image that has it; the images it was removed from."""
        if taken_at(name) is None:
            raise RbdError(f"{name!r} is not a ravada snapshot: not deleting it")
        removed = []
        for disk in disks:
            if self._remove(disk, name):
                removed.append(disk.spec)
        return removed

    def prune(self, disks: list[RbdDisk], keep: int) -> list[str]:
        """Delete all but the `keep` newest of our snapshots; the names deleted."""
        if keep < 1:
            raise RbdError("retention must keep at least one snapshot")
        old = self.list(disks)[:-keep]
        for snap in old:
            self.delete(disks, snap.name)
        return [s.name for s in old]

    def _remove(self, disk: RbdDisk, name: str) -> bool:
        with self._image(disk) as image:
            try:
                image.remove_snap(name)
            except rbd.ImageNotFound:
                return False
            except rbd.ImageBusy:
                raise RbdError(f"snapshot {disk.spec}@{name} is protected or has clones: not removed") from None
            except rbd.Error as exc:
                raise wrap(exc, f"removing snapshot {disk.spec}@{name}") from exc
        return True
