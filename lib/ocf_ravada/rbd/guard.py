"""The storage guard the VM agent calls around start, migration, monitor and stop.

Rules (see doc/rbd.md):
* never two writers on one disk: any other client that has the image open (a watcher) blocks
  a start -- RBD's exclusive lock would just be handed over to the second QEMU;
* a lock whose owner has no watch is stale; it is broken only after exactly that owner address
  has been blocklisted (fenced at the OSDs), never while anyone watches;
* every client that may still write without a lock -- the owner recorded in the image's owner
  record (owner.py), a watcher seen while waiting -- is blocklisted before a start elsewhere;
* when in doubt, refuse: a VM with several disks starts only when every disk is clear.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable, Iterable, Protocol, TypeVar

import rados
import rbd

from .addresses import ClientAddr
from .cluster import LONG_BLOCKLIST_SECONDS, CephSession, wrap
from .disks import RbdDisk
from .errors import MissingCaps, RbdError
from . import owner
from .image_state import ImageState, read_image_state
from .nodes import NodeMap, own_ceph_ips, pacemaker_fenced
from .owner import OwnerRecord

T = TypeVar("T")

CLAIM_LOCK_NAME = "ravada-start"
CLAIM_OBJECT_PREFIX = "ravada_claim."


class Policy(str, Enum):
    OFF = "off"            # do not look at Ceph at all
    CHECK = "check"        # refuse while in use; leave stale locks to QEMU's librbd
    RECOVER = "recover"    # also fence + break stale locks before the start (default)

    @classmethod
    def parse(cls, value: str) -> "Policy":
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise RbdError(f"rbd_lock_policy must be one of off, check, recover; got {value!r}") from None


class DeadlineLike(Protocol):
    def remaining(self) -> float: ...


@dataclass
class GuardResult:
    allowed: bool
    reason: str                                   # one line, for ocf-exit-reason / logs
    actions: list[str] = field(default_factory=list)   # what we changed in Ceph
    states: list[ImageState] = field(default_factory=list)


@dataclass
class RunningCheck:
    split_brain: list[str] = field(default_factory=list)   # other nodes' clients on our disks
    lost_watch: list[str] = field(default_factory=list)    # our QEMU no longer watches (fenced?)

    @property
    def ok(self) -> bool:
        return not self.split_brain and not self.lost_watch

    @property
    def reason(self) -> str:
        if self.split_brain:
            return "SPLIT BRAIN: " + "; ".join(self.split_brain)
        if self.lost_watch:
            return "our VM lost its hold on " + "; ".join(self.lost_watch)
        return "RBD disks held by this node only"


class RbdGuard:
    """Storage checks for one agent operation, on one Ceph session.

    node_map/local_node: who is who (node attribute ravada-ceph-addrs); own_ips: extra IPs of
    this node; watch_only_ips: see below; blocklist_seconds: lifetime of our fences;
    watch_timeout: the cluster's osd_client_watch_timeout (default: from our Ceph config);
    wait_margin: added to it when waiting for a watch to go away; stale_confirm: how long an
    unfenced stale lock must stay unwatched; reserve: time kept back from every deadline for
    the operation itself (the domain start); log: receives one line per notable step.
    """

    def __init__(self, session: CephSession, policy: Policy | str = Policy.RECOVER,
                 node_map: NodeMap | None = None, local_node: str = "",
                 own_ips: Iterable[str] | None = None,
                 watch_only_ips: Iterable[str] = (),
                 blocklist_seconds: float = LONG_BLOCKLIST_SECONDS,
                 watch_timeout: float | None = None, wait_margin: float = 5.0,
                 stale_confirm: float = 3.0,
                 reserve: float = 5.0, poll_interval: float = 0.5,
                 log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.session = session
        # Every wait goes through these two, so the waiting logic is testable on a fake clock.
        self.clock, self.sleep = clock, sleep
        self.policy = policy if isinstance(policy, Policy) else Policy.parse(policy)
        self.node_map = node_map or NodeMap()
        self.local_node = local_node
        ips = set(own_ips or ()) | set(own_ceph_ips(session))
        if local_node:
            ips |= set(self.node_map.ips_of(local_node))
        self.own_ips = frozenset(ips)
        # Hosts whose clients only watch images (rbd-mirror, backup agents): their watches
        # neither block a start nor count as split brain; a lock they hold still does.
        self.watch_only_ips = frozenset(watch_only_ips)
        self.blocklist_seconds = blocklist_seconds
        self.watch_timeout = session.watch_timeout() if watch_timeout is None else watch_timeout
        self.wait_margin = wait_margin
        self.stale_confirm = stale_confirm
        self.reserve = reserve
        self.poll_interval = poll_interval
        self.log = log or (lambda msg: None)
        # This node as owner records name it (and its claims).
        self.node_name = local_node or self.session.own_addr().ip
        self.me = owner.Party(self.node_name, tuple(sorted(self.own_ips)))
        self._claims: dict[tuple[str, str, str], str] = {}   # (pool, ns, image) -> cookie
        self._records: dict[tuple[str, str, str], OwnerRecord] = {}   # written by before_start

    @classmethod
    def open(cls, ceph_conf: str, ceph_id: str = "admin", keyring: str | None = None, *,
             timeout: float = 10.0, **kwargs) -> "RbdGuard":
        """Connect (bounded by `timeout`) and build a guard; raises CephConfigMissing,
        CephUnreachable or CephAuthError."""
        session = CephSession(ceph_conf, ceph_id, keyring, timeout=timeout)
        try:
            return cls(session, **kwargs)
        except BaseException:
            session.close()
            raise

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "RbdGuard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- start ------------------------------------------------------------------------------
    def before_start(self, disks: Iterable[RbdDisk], deadline: DeadlineLike,
                     migration_partner: str | None = None) -> GuardResult:
        """Decide whether QEMU may open these disks on this node now.

        Plain start: takes a short-lived start claim per image (so two nodes starting at once
        cannot both pass), waits (up to osd_client_watch_timeout + margin, bounded by the
        deadline) for other clients' watches to go away, refuses if any remain, fences (policy
        `recover`) every client that may still write -- stale lock owners, the recorded owner,
        watchers seen while waiting -- breaks stale locks, and records this node as the owner
        (QEMU's address still unknown).  Call after_start() once QEMU has been started (or has
        failed to): it records QEMU's address and releases the claims.

        Migration (`migration_partner` = the other node): watchers and the lock of the partner
        are expected; nothing is waited for, fenced or broken.

        Raises RbdError subclasses (CephUnreachable, MissingCaps, ImageMissing, ...) when no safe
        decision was possible; nothing was broken then.
        """
        guarded = [d for d in disks if d.guarded]
        if self.policy is Policy.OFF or not guarded:
            return GuardResult(True, "no RBD disks to check" if self.policy is not Policy.OFF
                               else "rbd_lock_policy=off: not checked")
        if migration_partner is not None:
            return self._check_migration(guarded, migration_partner)
        refusal = self._claim(guarded, deadline)
        if refusal:
            return refusal
        try:
            result = self._start_checks(guarded, deadline)
        except BaseException:
            self.after_start(guarded, started=False)
            raise
        if not result.allowed:
            self.after_start(guarded, started=False)
        return result

    def after_start(self, disks: Iterable[RbdDisk], started: bool = True,
                    settle: float = 3.0) -> None:
        """QEMU was started (or the start failed): record the addresses of this node's QEMU in
        the owner records written by before_start (waiting up to `settle` s for its watch), or
        drop this node from them when the start failed and nothing of ours has the disk open;
        then release the start claims.  Idempotent."""
        disks = list(disks)
        try:
            for disk in disks:
                record = self._records.pop(_key(disk), None)
                if record is not None:
                    self._settle_record(disk, record, started, settle)
        finally:
            self._release_claims(disks)

    def _settle_record(self, disk: RbdDisk, record: OwnerRecord, started: bool, settle: float) -> None:
        ours = self._poll(settle if started else 0.0,
                          lambda: self._own_watchers(read_image_state(self.session, disk)), bool)
        if ours:
            new = record.with_addrs(self.me, ours)
        elif started:
            self.log(f"{disk.spec}: no client of this node watches it yet; its owner record "
                     f"stays 'starting on {self.node_name}' (a start elsewhere refuses until this "
                     f"node is fenced or the VM is stopped here)")
            return
        else:
            new = record.without(self.me)
        try:
            owner.store(self.session, disk, record, new)
        except owner.RecordChanged as err:
            self.log(f"owner record not updated: {err.reason}")

    def _release_claims(self, disks: Iterable[RbdDisk]) -> None:
        for disk in disks:
            cookie = self._claims.pop(_key(disk), None)
            if cookie is None:
                continue
            try:
                self.session.ioctx(disk.pool, disk.namespace).unlock(
                    CLAIM_OBJECT_PREFIX + disk.image, CLAIM_LOCK_NAME, cookie)
            except rados.Error:
                pass    # expired or gone: the claim only ever bounded a race window

    def _claim(self, disks: list[RbdDisk], deadline: DeadlineLike) -> GuardResult | None:
        cookie = f"{self.node_name}/{os.getpid()}"
        duration = max(5, int(deadline.remaining() + self.wait_margin))
        for disk in sorted(disks, key=_key):        # fixed order: two starters cannot deadlock
            try:
                self.session.ioctx(disk.pool, disk.namespace).lock_exclusive(
                    CLAIM_OBJECT_PREFIX + disk.image, CLAIM_LOCK_NAME, cookie,
                    desc=f"start of a VM by {self.node_name}", duration=duration)
            except rados.ObjectExists:
                pass                                 # our own claim (same client, same cookie)
            except rados.ObjectBusy:
                self._release_claims(disks)
                return GuardResult(False, f"refusing to start: {disk.spec} is being started by "
                                          f"another client right now (claim {CLAIM_OBJECT_PREFIX}"
                                          f"{disk.image} held)")
            except rados.Error as exc:
                self._release_claims(disks)
                raise wrap(exc, f"taking the start claim for {disk.spec}") from exc
            self._claims[_key(disk)] = cookie
        return None

    def _start_checks(self, disks: list[RbdDisk], deadline: DeadlineLike) -> GuardResult:
        states, seen = self._wait_until_unwatched(disks, deadline)
        blocked = self._blockers(states)
        if blocked:
            return GuardResult(False, "refusing to start: " + blocked, states=states)
        records = [owner.load(self.session, d) for d in disks]
        suspects = self._suspects(states, records, seen)
        doubt = self._unresolved(records, seen, deadline)
        if doubt:
            return GuardResult(False, "refusing to start: " + doubt, states=states)
        listed = self.session.blocklist_ls()
        # A node-wide entry (fence_rbd) goes away when the node is unfenced; the exact address
        # of each suspect is blocklisted as well, so a stale QEMU stays cut off after that.
        exact = {str(ClientAddr.parse(e.addr)) for e in listed}
        unfenced = {a: why for a, why in suspects.items() if a not in exact}
        node_fenced = {a for a in unfenced if self.session.is_blocklisted(a, listed)}
        lock_owners = {str(h.addr) for s in states for h in s.holders}
        actions: list[str] = []
        notes: list[str] = []
        if self.policy is Policy.CHECK:
            # librbd fences a stale lock owner itself before it takes the lock over (needs mon
            # 'profile rbd'); a client without a lock nobody would fence: refuse.
            lockless = {a: why for a, why in unfenced.items()
                        if a not in lock_owners and a not in node_fenced}
            if lockless:
                return GuardResult(False, "refusing to start (rbd_lock_policy=check does not fence): "
                                   + self._listing(lockless) + " may still be alive", states=states)
            stale = {a: why for a, why in suspects.items() if a in lock_owners}
            if stale:
                notes.append("stale RBD lock(s) left for QEMU's librbd: " + self._listing(stale))
        elif unfenced:
            if set(unfenced) - node_fenced:
                states = self._confirm_gone(disks, states, deadline)
            if states is None:
                return GuardResult(False, "refusing to start: the previous owner could not be confirmed "
                                   "gone (in use again, a new lock owner, or no time left to confirm)")
            actions += self._fence(unfenced)
        if self.policy is Policy.RECOVER:
            actions += self._break_stale(states)
            states = [read_image_state(self.session, d) for d in disks]
            leftover = self._blockers(states) or "; ".join(
                f"{s.disk.spec} still locked by {self._who(h.addr)}" for s in states for h in s.holders)
            if leftover:
                return GuardResult(False, "refusing to start: disks changed during recovery: " + leftover,
                                   actions, states)
        for disk, record in zip(disks, records):
            try:
                self._records[_key(disk)] = self._take_record(disk, record, suspects)
            except owner.RecordChanged as err:
                return GuardResult(False, f"refusing to start: {err.reason} (a concurrent start or "
                                   f"stop)", actions, states)
        if not actions:
            return GuardResult(True, "; ".join(notes) or "RBD disks free", states=states)
        return GuardResult(True, "recovered stale RBD owner(s): " + "; ".join(actions), actions, states)

    def _listing(self, suspects: dict[str, str]) -> str:
        return ", ".join(f"{self._who(ClientAddr.parse(a))} ({why})" for a, why in sorted(suspects.items()))

    def _own_watchers(self, state: ImageState) -> tuple[str, ...]:
        return tuple(sorted(str(w.addr) for w in state.watchers if w.addr.ip in self.own_ips))

    def _take_record(self, disk: RbdDisk, record: OwnerRecord, handled: dict[str, str]) -> OwnerRecord:
        """Record this node as the owner (QEMU starting).  The record may have changed since we
        decided -- the previous owner's stop taking itself out: that is fine as long as it names
        nobody we have not dealt with; anything else is refused (RecordChanged)."""
        try:
            return owner.store(self.session, disk, record, record.owned_by(self.me))
        except owner.RecordChanged:
            fresh = owner.load(self.session, disk)
            if any(p.pending or not set(p.addrs) <= set(handled) for p in fresh.parties
                   if not p.is_(self.me)):
                raise
            return owner.store(self.session, disk, fresh, fresh.owned_by(self.me))

    def _suspects(self, states: list[ImageState], records: list[OwnerRecord],
                  seen: dict[str, str]) -> dict[str, str]:
        """Every client that may still write one of the disks although nothing watches them now
        (address -> why): stale lock owners, the recorded owner and migration target, watchers
        that went away while we waited.  A frozen QEMU that never wrote holds no lock: only
        the record (or our having seen its watch) names it."""
        suspects: dict[str, str] = dict(seen)
        for record in records:
            for party in record.parties:
                for addr in party.addrs:
                    suspects.setdefault(addr, f"recorded owner on {party.node}")
        for state in states:
            for holder in state.holders:
                suspects[str(holder.addr)] = f"stale lock on {state.disk.spec}"
        return suspects

    def _unresolved(self, records: list[OwnerRecord], seen: dict[str, str],
                    deadline: DeadlineLike) -> str:
        """A party recorded without an address (its QEMU was starting) on another node: its
        QEMU may exist, frozen, with no way to name it -- unless we saw its watch, or the node
        has been fenced since.  When in doubt, refuse."""
        seen_ips = {ClientAddr.parse(a).ip for a in seen}
        doubts = []
        for record in records:
            for party in record.parties:
                if not party.pending or party.is_(self.me):
                    continue     # our own node: libvirt has just told the agent no QEMU runs
                if seen_ips & (set(party.ips) | set(self.node_map.ips_of(party.node))):
                    continue
                if self.node_fenced(party.node, record.since, deadline, party.ips):
                    continue
                doubts.append(f"the owner record says {party.node} was starting this VM "
                              f"(epoch {record.epoch}) and its QEMU's address is unknown; fence "
                              f"{party.node} or stop the VM there first")
        return "; ".join(doubts)

    def node_fenced(self, node: str, since: float = 0.0, deadline: DeadlineLike | None = None,
                    ips: Iterable[str] = ()) -> str | None:
        """Why `node` counts as fenced after wall-clock time `since`: every Ceph IP of it (from
        the node map, else `ips`) is blocklisted (fence_rbd), or Pacemaker's history has a
        successful off/reboot of it completed after `since`; None when not confirmed."""
        ips = self.node_map.ips_of(node) or tuple(ips)
        listed = self.session.blocklist_ls()
        if ips and all(self.session.is_blocklisted(str(ClientAddr(ip, 0, 0)), listed) for ip in ips):
            return f"all Ceph IPs of {node} blocklisted"
        timeout = 10.0 if deadline is None else max(1.0, min(10.0, deadline.remaining() / 3))
        return pacemaker_fenced(node, timeout=timeout, after=since)

    def _confirm_gone(self, disks: list[RbdDisk], states: list[ImageState],
                      deadline: DeadlineLike) -> list[ImageState] | None:
        """A live librbd client re-registers its watch after an OSD failover; in that gap it
        looks gone.  Before fencing a client that is not already blocklisted, the disks must
        still be unwatched, with no new lock owner, `stale_confirm` seconds later.  Fresh
        states, or None when the caller must refuse."""
        if deadline.remaining() - self.reserve < self.stale_confirm:
            return None
        self.sleep(self.stale_confirm)
        fresh = [read_image_state(self.session, d) for d in disks]
        if self._blockers(fresh):
            return None
        before = {(s.disk.spec, h) for s in states for h in s.holders}
        if any((s.disk.spec, h) not in before for s in fresh for h in s.holders):
            return None
        return fresh

    def _wait_until_unwatched(self, disks: list[RbdDisk], deadline: DeadlineLike
                              ) -> tuple[list[ImageState], dict[str, str]]:
        """Poll until no disk is watched, for at most the watch timeout + margin and never past
        the deadline minus the reserve the start itself needs.  Also returns every watcher seen
        meanwhile (address -> why): one that went away may be a frozen QEMU whose watch
        expired, and is fenced like a stale owner."""
        wait = min(self.watch_timeout + self.wait_margin, max(0.0, deadline.remaining() - self.reserve))
        seen: dict[str, str] = {}
        looks = 0

        def look() -> list[ImageState]:
            nonlocal looks
            states = [read_image_state(self.session, d) for d in disks]
            for s in states:
                for w in s.watchers:
                    if w.addr.ip not in self.watch_only_ips:
                        seen.setdefault(str(w.addr), f"watcher of {s.disk.spec} seen while waiting")
            looks += 1
            if looks == 2:       # a second look means we are waiting: say so, once
                self.log("RBD disk(s) watched, waiting up to %.0fs for the watch to expire: %s"
                         % (wait, self._blockers(states)))
            return states

        states = self._poll(wait, look, lambda states: any(s.foreign_lock for s in states)
                            or not self._blockers(states))
        return states, seen

    def _poll(self, seconds: float, look: Callable[[], T], done: Callable[[T], bool]) -> T:
        """look() every poll_interval until done(result) or `seconds` have passed; the last
        result."""
        end = self.clock() + seconds
        while True:
            result = look()
            if done(result) or self.clock() + self.poll_interval > end:
                return result
            self.sleep(self.poll_interval)

    def _blockers(self, states: list[ImageState], allowed_ips: frozenset[str] = frozenset()) -> str:
        problems = []
        for s in states:
            if s.foreign_lock:
                h = s.holders[0]
                problems.append(f"{s.disk.spec} has a foreign advisory lock (tag {s.lock_tag!r}, "
                                f"{h.entity} cookie {h.cookie!r} at {self._who(h.addr)}); remove it "
                                f"with 'rbd lock rm' once its owner is known dead")
                continue
            foreign = [w.addr for w in s.watchers if w.addr.ip not in allowed_ips | self.watch_only_ips]
            if foreign:
                problems.append(f"{s.disk.spec} is open by " + ", ".join(self._who(a) for a in foreign))
            owners = [h.addr for h in s.live_holders if h.addr.ip not in allowed_ips and h.addr not in foreign]
            if owners:
                problems.append(f"{s.disk.spec} is locked by live " + ", ".join(self._who(a) for a in owners))
        return "; ".join(problems)

    def _fence(self, suspects: dict[str, str]) -> list[str]:
        """Blocklist exactly these client addresses (one QEMU each): a hung-but-alive one gets
        ESHUTDOWN for every later write instead of writing over the new VM's data."""
        own = str(self.session.own_addr())
        actions = []
        for addr, why in sorted(suspects.items()):
            if addr == own:
                raise RbdError(f"refusing to blocklist our own client {addr}")
            self.session.blocklist_add(addr, self.blocklist_seconds)
            actions.append(f"blocklisted {self._who(ClientAddr.parse(addr))} ({why})")
        return actions

    def _break_stale(self, states: list[ImageState]) -> list[str]:
        """Break the (now fenced) stale locks: called only once nothing watches the disks."""
        actions = []
        for state in states:
            for holder in state.holders:
                self._break(state.disk, holder)
                actions.append(f"broke lock of {holder.addr} on {state.disk.spec}")
        return actions

    def _break(self, disk: RbdDisk, holder) -> None:
        io = self.session.ioctx(disk.pool, disk.namespace)
        try:
            with rbd.Image(io, disk.image) as img:      # lock_break needs a writable handle
                img.lock_break(rbd.RBD_LOCK_MODE_EXCLUSIVE, str(holder.addr))
        except rbd.ImageNotFound:
            pass          # no lock any more: already free (the re-check after this decides)
        except rbd.ImageBusy:
            pass          # the owner changed meanwhile: the re-check refuses if it is live
        except (rbd.Error, rados.Error) as exc:
            if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
                raise MissingCaps(f"breaking the lock on {disk.spec}: permission denied (librbd "
                                  f"blocklists the owner first: our cephx user needs mon 'profile rbd')") from exc
            raise wrap(exc, f"breaking the lock on {disk.spec}") from exc

    # ---- migration --------------------------------------------------------------------------
    def _check_migration(self, disks: list[RbdDisk], partner: str) -> GuardResult:
        allowed = self.own_ips | frozenset(self.node_map.ips_of(partner))
        states = [read_image_state(self.session, d) for d in disks]
        problems = [p for p in [self._blockers(states, allowed)] if p]
        problems += [f"{s.disk.spec} locked by {self._who(h.addr)}"
                     for s in states if not s.foreign_lock for h in s.stale_holders if h.addr.ip not in allowed]
        if not self.node_map.ips_of(partner):
            problems.append(f"no Ceph addresses known for migration partner {partner!r} "
                            f"(node attribute ravada-ceph-addrs)")
        partner_party = self._party(partner)
        for disk in disks:
            record = owner.load(self.session, disk)
            strangers = [p.node for p in record.parties
                         if not p.is_(self.me) and not p.is_(partner_party)]
            if strangers:
                problems.append(f"{disk.spec}: the owner record names {', '.join(strangers)} "
                                f"({record.describe()})")
        if problems:
            return GuardResult(False, "refusing migration: " + "; ".join(problems), states=states)
        return GuardResult(True, f"RBD disks used only by this node and {partner}", states=states)

    def begin_migration(self, disks: Iterable[RbdDisk], target: str) -> GuardResult:
        """Source side, before libvirt migrates: record `target` as the incoming party next to
        this node (its QEMU will open the disks), so a start elsewhere during the migration
        knows both.  Refuses when the record names another owner."""
        guarded = [d for d in disks if d.guarded]
        if self.policy is Policy.OFF:
            return GuardResult(True, "rbd_lock_policy=off: not recorded")
        for disk in guarded:
            record = owner.load(self.session, disk)
            if record.owner is not None and not record.owner.is_(self.me):
                return GuardResult(False, f"refusing migration: {disk.spec} belongs to another node "
                                          f"according to its owner record ({record.describe()})")
            ours = self._own_watchers(read_image_state(self.session, disk))
            current = record if record.owner else record.owned_by(replace(self.me, addrs=ours))
            try:
                owner.store(self.session, disk, record, current.migrating_to(self._party(target)))
            except owner.RecordChanged as err:
                return GuardResult(False, f"refusing migration: {err.reason}")
        return GuardResult(True, f"owner records name {target} as migration target")

    def end_migration(self, disks: Iterable[RbdDisk], target: str, succeeded: bool) -> None:
        """Source side, once libvirt's migration returned: on success the record passes to the
        target (with its QEMU's addresses when they can be seen) in one write; on failure the
        target is dropped again, unless a client of it still has the disk open."""
        if self.policy is Policy.OFF:
            return
        them = self._party(target)
        for disk in (d for d in disks if d.guarded):
            record = owner.load(self.session, disk)
            theirs = tuple(sorted(str(w.addr) for w in read_image_state(self.session, disk).watchers
                                  if w.addr.ip in them.ips))
            if succeeded:
                new = record.without(self.me)
                if new.owner is None or not new.owner.is_(them):
                    new = new.owned_by(them)
            else:
                new = record if theirs else record.without(them)
            if theirs:
                new = new.with_addrs(them, theirs)
            try:
                owner.store(self.session, disk, record, new)
            except owner.RecordChanged as err:
                self.log(f"owner record not handed over: {err.reason}")

    def arrived(self, disks: Iterable[RbdDisk], source: str) -> GuardResult:
        """Target side, after an incoming migration passed the checks: this node owns the
        disks now, with its QEMU's addresses (the source normally handed over already)."""
        if self.policy is Policy.OFF:
            return GuardResult(True, "rbd_lock_policy=off: not recorded")
        for disk in (d for d in disks if d.guarded):
            record = owner.load(self.session, disk)
            if record.owner is not None and not (record.owner.is_(self.me)
                                                 or record.owner.is_(self._party(source))):
                return GuardResult(False, f"{disk.spec} was taken over by another node meanwhile "
                                          f"({record.describe()})")
            ours = self._own_watchers(read_image_state(self.session, disk))
            if record.owner is not None and record.owner.is_(self.me) and not record.incoming:
                new = record.with_addrs(self.me, ours) if ours else record
            else:
                new = record.owned_by(replace(self.me, addrs=ours))
            if new != record:
                try:
                    owner.store(self.session, disk, record, new)
                except owner.RecordChanged as err:
                    return GuardResult(False, f"owner record not taken over: {err.reason}")
        return GuardResult(True, "owner records name this node")

    # ---- monitor ----------------------------------------------------------------------------
    def check_running(self, disks: Iterable[RbdDisk], confirm_seconds: float = 3.0) -> RunningCheck:
        """For a VM running on this node: any client of another node on its disks (watcher or
        lock owner), or an owner record naming another node, is a split brain; a disk this
        node no longer watches means our QEMU was cut off (blocklisted).  A finding counts only
        when it persists for `confirm_seconds` (an admin's short `rbd snap create` elsewhere,
        an OSD failover re-registering our watch); a clean result costs a few milliseconds per
        disk.  A healthy disk whose record lacks our QEMU's address (a VM started before
        records existed, or whose address was not seen at start) gets it filled in."""
        guarded = [d for d in disks if d.guarded]
        if self.policy is Policy.OFF or not guarded:
            return RunningCheck()
        check, repairs = self._poll(confirm_seconds, lambda: self._running_findings(guarded),
                                    lambda found: found[0].ok)
        if check.ok:
            for disk, record, new in repairs:
                try:
                    owner.store(self.session, disk, record, new)
                except owner.RecordChanged:
                    pass        # changed under us: the next monitor looks again
        return check

    def _running_findings(self, disks: list[RbdDisk]
                          ) -> tuple[RunningCheck, list[tuple[RbdDisk, OwnerRecord, OwnerRecord]]]:
        check = RunningCheck()
        repairs = []
        for disk in disks:
            s = read_image_state(self.session, disk)
            others = [w.addr for w in s.watchers if w.addr.ip not in self.own_ips | self.watch_only_ips]
            others += [h.addr for h in s.holders if h.addr.ip not in self.own_ips and h.addr not in others]
            if others:
                check.split_brain.append(f"{disk.spec} is also used by "
                                         + ", ".join(self._who(a) for a in others))
            ours = self._own_watchers(s)
            if not ours:
                check.lost_watch.append(f"{disk.spec} is not watched by this node")
            record = owner.load(self.session, disk)
            if record.owner is not None and not record.owner.is_(self.me):
                check.split_brain.append(f"{disk.spec} belongs to another node by its owner record "
                                         f"({record.describe()})")
            elif ours and not record.incoming:
                new = record.owned_by(replace(self.me, addrs=ours)) if record.owner is None \
                    else record.with_addrs(self.me, ours)
                if new != record:
                    repairs.append((disk, record, new))
        return check, repairs

    # ---- stop -------------------------------------------------------------------------------
    def after_stop(self, disks: Iterable[RbdDisk], deadline: DeadlineLike) -> GuardResult:
        """After libvirt reports the VM stopped (or not running here): no client of this node
        may still have its disks open.  A clean QEMU exit drops its watch at once; a killed one
        leaves it for the watch timeout.  Waits briefly, then (policy recover) blocklists
        exactly those addresses so nothing from this node can write any more, and takes this
        node out of the owner records -- a clean stop leaves nothing for a start elsewhere to
        fence or wait for.  RbdError (e.g. MissingCaps) means they could not be cut off."""
        guarded = [d for d in disks if d.guarded]
        if self.policy is Policy.OFF or not guarded:
            return GuardResult(True, "not checked")
        states = self._poll(min(2.0, max(0.0, deadline.remaining() - self.reserve)),
                            lambda: [read_image_state(self.session, d) for d in guarded],
                            lambda states: not any(self._own_watchers(s) for s in states))
        ours = {w.addr for s in states for w in s.watchers if w.addr.ip in self.own_ips}
        if ours and self.policy is not Policy.RECOVER:
            # A killed QEMU's watch lingers for the watch timeout: normal after a destroy, and
            # without `recover` we do not fence: the record keeps naming them for the next start.
            for state in states:
                leftover = self._own_watchers(state)
                self._update_record(state.disk, lambda r, addrs=leftover: r.with_addrs(self.me, addrs))
            return GuardResult(True, "watch(es) of this node's client(s) "
                               + ", ".join(map(str, sorted(ours, key=str)))
                               + " still present (rbd_lock_policy=check: not fenced)", states=states)
        actions = []
        for addr in sorted(ours, key=str):
            self.session.blocklist_add(str(addr), self.blocklist_seconds)
            actions.append(f"blocklisted leftover client {addr}")
        for disk in guarded:
            self._update_record(disk, lambda r: r.without(self.me))
        return GuardResult(True, "; ".join(actions) or "no client of this node has the disks open",
                           actions, states)

    def _update_record(self, disk: RbdDisk, change) -> None:
        """Apply change(record) to the current record; retried once if it changed meanwhile."""
        for _ in range(2):
            record = owner.load(self.session, disk)
            new = change(record)
            if new == record:
                return
            try:
                owner.store(self.session, disk, record, new)
                return
            except owner.RecordChanged as err:
                reason = err.reason
        self.log(f"owner record not updated: {reason}")

    # ---- manual release (ravada-rbd) ---------------------------------------------------------
    def release(self, disk: RbdDisk, dry_run: bool = False,
                fenced_nodes: Iterable[str] = ()) -> GuardResult:
        """Free one image now, without waiting: blocklist its lock owner and the QEMU clients its
        owner record names, break the lock, clear the record.  Watchers block the release,
        except those of `fenced_nodes` (confirmed fenced by the caller): their exact addresses
        are blocklisted first, which drops their watches at once.  A record naming a node whose
        QEMU was starting (address unknown) blocks it unless that node is in `fenced_nodes`."""
        fenced_nodes = set(fenced_nodes)
        state = read_image_state(self.session, disk)
        record = owner.load(self.session, disk)
        fenced_ips = frozenset(ip for n in fenced_nodes for ip in self.node_map.ips_of(n))
        blockers = self._blockers([state], fenced_ips)
        blockers = "; ".join([blockers] * bool(blockers) + [
            f"the owner record says {p.node} was starting the VM (address unknown); confirm it is "
            f"fenced (--force-after-fence)" for p in record.parties if p.pending and p.node not in fenced_nodes])
        if blockers:
            return GuardResult(False, "refusing: " + blockers, states=[state])
        to_fence = sorted({str(w.addr) for w in state.watchers} | {str(h.addr) for h in state.holders}
                          | {a for p in record.parties for a in p.addrs})
        listed = self.session.blocklist_ls()
        to_fence = [a for a in to_fence if not self.session.is_blocklisted(a, listed)]
        if not to_fence and not state.holders and record.empty:
            return GuardResult(True, f"{disk.spec} is free: nothing to do", states=[state])
        plan = [f"blocklist {self._who(ClientAddr.parse(a))}" for a in to_fence]
        plan += [f"break lock of {self._who(h.addr)}" for h in state.holders]
        plan += [f"clear owner record ({record.describe()})"] * (not record.empty)
        if dry_run:
            return GuardResult(True, "would " + "; ".join(plan), plan, [state])
        for addr in to_fence:
            self.session.blocklist_add(addr, self.blocklist_seconds)
        for holder in state.holders:
            self._break(disk, holder)
        after = read_image_state(self.session, disk)
        if after.watchers or after.holders:
            left = self._blockers([after]) or "lock still present"
            return GuardResult(False, f"{disk.spec} still in use after release: {left}", plan, [after])
        try:
            owner.store(self.session, disk, record, OwnerRecord())
        except owner.RecordChanged as err:
            return GuardResult(False, f"{disk.spec}: {err.reason}; run the release again", plan, [after])
        return GuardResult(True, "released: " + "; ".join(plan), plan, [after])

    # ---- helpers ----------------------------------------------------------------------------
    def _party(self, node: str) -> owner.Party:
        """Another node as owner records name it (its IPs from the node map)."""
        return owner.Party(node, tuple(sorted(self.node_map.ips_of(node))))

    def _who(self, addr: ClientAddr) -> str:
        return self.node_map.describe(addr, self.own_ips)


def _key(disk: RbdDisk) -> tuple[str, str, str]:
    return (disk.pool, disk.namespace, disk.image)
