"""The owner record of an RBD image: which node's QEMU may write it, by client address.

librbd takes an image's exclusive lock only at the first write, so a VM that has opened its
disk but not written yet holds no lock; if it freezes, nothing in the image says who it is.
The record closes that window: the agent writes it before QEMU opens the image and fills in
QEMU's client address once QEMU watches the image, so a later start elsewhere knows exactly
which client to blocklist even when its watch and lock are long gone (see doc/rbd.md).

One small RADOS object per image, `ravada_owner.<image>` next to it, holding JSON:
    {"epoch": 7, "since": 1764540000.0,
     "owner": {"node": "node1", "ips": ["10.0.0.11"], "addrs": ["10.0.0.11:0/3141592653"]},
     "incoming": {"node": "node2", "ips": ["10.0.0.12"], "addrs": []}}   # only while migrating
Every change is a compare-and-swap on the object's RADOS version (assert_version, or an
exclusive create when there is none), so two writers can never both believe they won.
Not image-meta: setting that needs a writable open, which asks the running QEMU's librbd for the
exclusive lock (a frozen QEMU would hang it).
"""
from __future__ import annotations

import errno
import json
import time
from dataclasses import dataclass, field, replace

import rados

from .cluster import CephSession, wrap
from .disks import RbdDisk
from .errors import RbdError

OBJECT_PREFIX = "ravada_owner."
MAX_RECORD_BYTES = 4096          # a record is ~200 bytes; more is not ours


class RecordChanged(RbdError):
    """Someone else changed the record between our read and our write."""


class BadRecord(RbdError):
    """The record object holds something that is not a valid owner record."""


@dataclass(frozen=True)
class Party:
    """A node that runs (or is about to run) the VM: its name, the IPs its Ceph clients use, and
    its QEMU's client addresses.  `addrs` is empty while QEMU is being started: the address is
    known only once it watches the image."""
    node: str
    ips: tuple[str, ...] = ()
    addrs: tuple[str, ...] = ()

    @property
    def pending(self) -> bool:
        return not self.addrs

    def is_(self, other: "Party") -> bool:
        """The same node: same name and, when both know them, a common Ceph IP (two hosts that
        share a name -- no Pacemaker node name given -- are still told apart)."""
        return self.node == other.node and (not self.ips or not other.ips
                                            or bool(set(self.ips) & set(other.ips)))

    def to_json(self) -> dict:
        return {"node": self.node, "ips": list(self.ips), "addrs": list(self.addrs)}

    @classmethod
    def from_json(cls, data: object) -> "Party | None":
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("node"), str) or not data["node"]:
            raise BadRecord("owner record: a party without a node name")
        lists = {key: data.get(key, []) for key in ("ips", "addrs")}
        for key, value in lists.items():
            if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
                raise BadRecord(f"owner record: {key} must be a list of addresses")
        return cls(data["node"], tuple(lists["ips"]), tuple(lists["addrs"]))


@dataclass(frozen=True)
class OwnerRecord:
    owner: Party | None = None
    incoming: Party | None = None        # the target of a live migration in flight
    epoch: int = 0                       # +1 at every change of owner, for messages and audits
    since: float = 0.0                   # wall clock (UTC seconds) of the last change of owner
    version: int = field(default=0, compare=False)   # RADOS object version; 0 = no object

    @property
    def parties(self) -> tuple[Party, ...]:
        return tuple(p for p in (self.owner, self.incoming) if p is not None)

    @property
    def empty(self) -> bool:
        return not self.parties

    def describe(self) -> str:
        if self.empty:
            return "no owner recorded"
        text = _describe(self.owner) if self.owner else "no owner"
        if self.incoming:
            text += f", migrating to {_describe(self.incoming)}"
        return f"{text} (epoch {self.epoch})"

    # ---- transitions (pure: the caller writes the result with store()) ---------------------
    def owned_by(self, node: Party) -> "OwnerRecord":
        """A new owner: a start (no address yet) or the end of a migration."""
        return replace(self, owner=node, incoming=None, epoch=self.epoch + 1, since=time.time())

    def with_addrs(self, node: Party, addrs: tuple[str, ...]) -> "OwnerRecord":
        """The addresses of `node`'s QEMU, now that it watches the image."""
        def update(party: Party | None) -> Party | None:
            return replace(party, addrs=addrs) if party is not None and party.is_(node) else party
        return replace(self, owner=update(self.owner), incoming=update(self.incoming))

    def migrating_to(self, node: Party) -> "OwnerRecord":
        return replace(self, incoming=node)

    def without(self, node: Party) -> "OwnerRecord":
        """`node`'s QEMU is gone: drop it; the migration target (if any) becomes the owner."""
        if self.incoming and self.incoming.is_(node):
            return replace(self, incoming=None)
        if self.owner and self.owner.is_(node):
            return replace(self, owner=self.incoming, incoming=None, epoch=self.epoch + 1,
                           since=time.time())
        return self

    def to_bytes(self) -> bytes:
        return json.dumps({"epoch": self.epoch, "since": self.since,
                           "owner": self.owner.to_json() if self.owner else None,
                           "incoming": self.incoming.to_json() if self.incoming else None},
                          sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, version: int) -> "OwnerRecord":
        if not data:
            return cls(version=version)
        if len(data) > MAX_RECORD_BYTES:
            raise BadRecord(f"owner record is {len(data)} bytes (not written by this agent)")
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadRecord(f"owner record is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise BadRecord("owner record is not a JSON object")
        epoch, since = raw.get("epoch", 0), raw.get("since", 0.0)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise BadRecord("owner record: epoch must be a non-negative integer")
        if not isinstance(since, (int, float)) or isinstance(since, bool) or not 0 <= since < 1e11:
            raise BadRecord("owner record: since must be a time in seconds")
        return cls(Party.from_json(raw.get("owner")), Party.from_json(raw.get("incoming")),
                   epoch, float(since), version)


def _describe(party: Party) -> str:
    return f"{party.node} ({', '.join(party.addrs) if party.addrs else 'QEMU starting, address not yet known'})"


def object_name(disk: RbdDisk) -> str:
    return OBJECT_PREFIX + disk.image


def load(session: CephSession, disk: RbdDisk) -> OwnerRecord:
    """The current record (an empty one, version 0, when there is none)."""
    io = session.ioctx(disk.pool, disk.namespace)
    try:
        data = io.read(object_name(disk), MAX_RECORD_BYTES + 1, 0)
    except rados.ObjectNotFound:
        return OwnerRecord()
    except rados.Error as exc:
        raise wrap(exc, f"reading the owner record of {disk.spec}") from exc
    try:
        return OwnerRecord.from_bytes(data, io.get_last_version())
    except BadRecord as err:
        raise BadRecord(f"{disk.spec}: {err}; inspect it with 'rados -p {disk.pool} get "
                        f"{object_name(disk)} -'") from None


def store(session: CephSession, disk: RbdDisk, old: OwnerRecord, new: OwnerRecord) -> OwnerRecord:
    """Replace `old` (as loaded) by `new`, atomically: RecordChanged when the object is no longer
    at old's version.  An empty `new` removes the object.  Returns `new` with its version."""
    io = session.ioctx(disk.pool, disk.namespace)
    with rados.WriteOpCtx() as op:
        if old.version:
            op.assert_version(old.version)
        else:
            op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
        if new.empty:
            if not old.version:
                return replace(new, version=0)
            op.remove()
        else:
            op.write_full(new.to_bytes())
        try:
            io.operate_write_op(op, object_name(disk))
        except rados.ObjectExists:
            raise RecordChanged(f"{disk.spec}: an owner record appeared meanwhile") from None
        except rados.ObjectNotFound:
            raise RecordChanged(f"{disk.spec}: the owner record was removed meanwhile") from None
        except rados.Error as exc:
            if getattr(exc, "errno", None) in (errno.ERANGE, errno.EOVERFLOW):
                raise RecordChanged(f"{disk.spec}: the owner record changed meanwhile") from None
            raise wrap(exc, f"writing the owner record of {disk.spec}") from exc
    return replace(new, version=0 if new.empty else io.get_last_version())
