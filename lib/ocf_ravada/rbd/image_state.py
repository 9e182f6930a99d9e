"""Who has an RBD image open (watchers) and who holds its lock, read without touching it.

The image is opened read-only: such a handle registers no watch of its own and re-reads the
header, so each call is a fresh view.  A watcher is a live client (its watch expires
osd_client_watch_timeout after it dies or is fenced); a lock holder without a watcher is stale.
"""
from __future__ import annotations

from dataclasses import dataclass

import rados
import rbd

from .addresses import ClientAddr
from .cluster import CephSession, wrap
from .disks import RbdDisk
from .errors import ImageMissing

MANAGED_LOCK_TAG = "internal"      # the tag librbd's exclusive-lock feature uses


@dataclass(frozen=True)
class Watcher:
    addr: ClientAddr
    gid: int
    cookie: int


@dataclass(frozen=True)
class LockHolder:
    entity: str                     # 'client.4113'
    cookie: str                     # 'auto 139882722759904' for the managed lock
    addr: ClientAddr


@dataclass(frozen=True)
class ImageState:
    disk: RbdDisk
    watchers: tuple[Watcher, ...]
    lock_tag: str                   # '' when unlocked
    holders: tuple[LockHolder, ...]

    @property
    def foreign_lock(self) -> bool:
        """An advisory lock by some other tool: it blocks all I/O on exclusive-lock images."""
        return bool(self.holders) and self.lock_tag != MANAGED_LOCK_TAG

    def is_watched_by(self, addr: ClientAddr) -> bool:
        # Conservative: any watch from the same client address counts as "alive", whatever
        # its cookie (librbd itself also requires the cookie to match before breaking).
        return any(w.addr == addr for w in self.watchers)

    @property
    def stale_holders(self) -> tuple[LockHolder, ...]:
        return tuple(h for h in self.holders if not self.is_watched_by(h.addr))

    @property
    def live_holders(self) -> tuple[LockHolder, ...]:
        return tuple(h for h in self.holders if self.is_watched_by(h.addr))


def read_image_state(session: CephSession, disk: RbdDisk) -> ImageState:
    io = session.ioctx(disk.pool, disk.namespace)
    try:
        with rbd.Image(io, disk.image, read_only=True) as img:
            watchers = tuple(Watcher(ClientAddr.parse(w["addr"]), int(w["id"]), int(w["cookie"]))
                             for w in img.watchers_list())
            lockers = img.list_lockers() or {}
    except rbd.ImageNotFound as exc:
        raise ImageMissing(f"RBD image {disk.spec} does not exist") from exc
    except (rbd.Error, rados.Error) as exc:
        raise wrap(exc, f"reading the state of {disk.spec}") from exc
    holders = tuple(LockHolder(entity, cookie, ClientAddr.parse(addr))
                    for entity, cookie, addr in lockers.get("lockers", []))
    return ImageState(disk, watchers, lockers.get("tag", "") if holders else "", holders)
