"""The storage guard the VM agent calls around start, migration, monitor and stop.

Rules (see doc/rbd.md):
* never two writers on one disk: any other client that has the image open (a watcher) blocks
  a start -- RBD's exclusive lock would just be handed over to the second QEMU;
* a lock whose owner has no watch is stale; it is broken only after exactly that owner address
  has been blocklisted (fenced at the OSDs), never while anyone watches;
* when in doubt, refuse: a VM with several disks starts only when every disk is clear.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Protocol

import rados
import rbd

from .addresses import ClientAddr
from .cluster import LONG_BLOCKLIST_SECONDS, CephSession, wrap
from .disks import RbdDisk
from .errors import MissingCaps, RbdError
from .image_state import ImageState, LockHolder, read_image_state
from .nodes import NodeMap, own_ceph_ips

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
                 log: Callable[[str], None] | None = None) -> None:
        self.session = session
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
        self._claims: dict[tuple[str, str, str], str] = {}   # (pool, ns, image) -> cookie

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
        deadline) for other clients' watches to go away, refuses if any remain, and with policy
        `recover` fences + breaks stale locks.  Claims are kept until after_start() or their
        expiry (the deadline), released here on refusal or error.

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
            self.after_start(guarded)
            raise
        if not result.allowed:
            self.after_start(guarded)
        return result

    def after_start(self, disks: Iterable[RbdDisk]) -> None:
        """Release our start claims (QEMU's watch now shows the disk is in use).  Idempotent."""
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
        cookie = f"{self.local_node or self.session.own_addr().ip}/{os.getpid()}"
        duration = max(5, int(deadline.remaining() + self.wait_margin))
        for disk in sorted(disks, key=_key):        # fixed order: two starters cannot deadlock
            try:
                self.session.ioctx(disk.pool, disk.namespace).lock_exclusive(
                    CLAIM_OBJECT_PREFIX + disk.image, CLAIM_LOCK_NAME, cookie,
                    desc=f"start of a VM by {self.local_node or 'this node'}", duration=duration)
            except rados.ObjectExists:
                pass                                 # our own claim (same client, same cookie)
            except rados.ObjectBusy:
                self.after_start(disks)
                return GuardResult(False, f"refusing to start: {disk.spec} is being started by "
                                          f"another client right now (claim {CLAIM_OBJECT_PREFIX}"
                                          f"{disk.image} held)")
            except rados.Error as exc:
                self.after_start(disks)
                raise wrap(exc, f"taking the start claim for {disk.spec}") from exc
            self._claims[_key(disk)] = cookie
        return None

    def _start_checks(self, disks: list[RbdDisk], deadline: DeadlineLike) -> GuardResult:
        states = self._wait_until_unwatched(disks, deadline)
        blocked = self._blockers(states)
        if blocked:
            return GuardResult(False, "refusing to start: " + blocked, states=states)
        stale = [(s, h) for s in states for h in s.stale_holders]
        if not stale:
            return GuardResult(True, "RBD disks free", states=states)
        if self.policy is Policy.CHECK:
            # No watcher: Ceph considers the owner dead; QEMU's librbd breaks it on first write
            # (needs mon 'profile rbd').
            return GuardResult(True, "stale RBD lock(s) left for QEMU's librbd: " + ", ".join(
                f"{s.disk.spec} by {self._who(h.addr)}" for s, h in stale), states=states)
        states, confirmed = self._confirm_stale(disks, states, stale, deadline)
        if confirmed is None:
            return GuardResult(False, "refusing to start: " + (self._blockers(states) or
                               "stale RBD lock could not be confirmed (no time left, or the lock "
                               "changed hands meanwhile)"), states=states)
        if not confirmed:
            return GuardResult(True, "RBD disks free (the stale lock went away)", states=states)
        stale = confirmed
        actions = self._fence_and_break(stale)
        states = [read_image_state(self.session, d) for d in disks]
        leftover = self._blockers(states) or "; ".join(
            f"{s.disk.spec} still locked by {self._who(h.addr)}" for s in states for h in s.holders)
        if leftover:
            return GuardResult(False, "refusing to start: disks changed during recovery: " + leftover,
                               actions, states)
        return GuardResult(True, "recovered stale RBD lock(s): " + "; ".join(actions), actions, states)

    def _confirm_stale(self, disks: list[RbdDisk], states: list[ImageState],
                       stale: list[tuple[ImageState, LockHolder]], deadline: DeadlineLike,
                       ) -> tuple[list[ImageState], list[tuple[ImageState, LockHolder]] | None]:
        """A live librbd client re-registers its watch after an OSD failover; in that gap its
        lock looks stale.  Owners already on the blocklist (fenced) are stale for sure; for the
        others the lock must still be unwatched `stale_confirm` seconds later.  Returns fresh
        states and the confirmed stale owners: [] when the disks became free meanwhile, None
        when the caller must refuse (in use again, a new owner, or no time to confirm)."""
        listed = self.session.blocklist_ls()
        if all(self.session.is_blocklisted(str(h.addr), listed) for _, h in stale):
            return states, stale
        if deadline.remaining() - self.reserve < self.stale_confirm:
            return states, None
        time.sleep(self.stale_confirm)
        fresh = [read_image_state(self.session, d) for d in disks]
        if self._blockers(fresh):
            return fresh, None
        before = {(s.disk.spec, h) for s, h in stale}
        confirmed = [(s, h) for s in fresh for h in s.stale_holders if (s.disk.spec, h) in before]
        if len(confirmed) != sum(len(s.holders) for s in fresh):
            return fresh, None        # a new owner appeared meanwhile
        return fresh, confirmed

    def _wait_until_unwatched(self, disks: list[RbdDisk], deadline: DeadlineLike) -> list[ImageState]:
        """Poll until no disk is watched, for at most the watch timeout + margin and never past
        the deadline minus the reserve the start itself needs."""
        limit = time.monotonic() + min(self.watch_timeout + self.wait_margin,
                                       max(0.0, deadline.remaining() - self.reserve))
        announced = False
        while True:
            states = [read_image_state(self.session, d) for d in disks]
            if any(s.foreign_lock for s in states) or not self._blockers(states):
                return states
            if time.monotonic() + self.poll_interval > limit:
                return states
            if not announced:
                self.log("RBD disk(s) watched, waiting up to %.0fs for the watch to expire: %s"
                         % (limit - time.monotonic(), self._blockers(states)))
                announced = True
            time.sleep(self.poll_interval)

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

    def _fence_and_break(self, stale: list[tuple[ImageState, LockHolder]]) -> list[str]:
        actions = []
        # Fence first (all of them), break afterwards: a break without the fence would let a
        # hung-but-alive owner write again when it wakes up.
        blocklisted = set()
        for state, holder in stale:
            addr = str(holder.addr)
            if addr in blocklisted:
                continue
            if holder.addr == self.session.own_addr():
                raise RbdError(f"{state.disk.spec}: refusing to blocklist our own client {addr}")
            self.session.blocklist_add(addr, self.blocklist_seconds)
            blocklisted.add(addr)
            actions.append(f"blocklisted {self._who(holder.addr)}")
        for state, holder in stale:
            self._break(state.disk, holder)
            actions.append(f"broke lock on {state.disk.spec}")
        return actions

    def _break(self, disk: RbdDisk, holder: LockHolder) -> None:
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
                raise MissingCaps(f"breaking the lock on {disk.spec}: permission denied") from exc
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
        if problems:
            return GuardResult(False, "refusing migration: " + "; ".join(problems), states=states)
        return GuardResult(True, f"RBD disks used only by this node and {partner}", states=states)

    # ---- monitor ----------------------------------------------------------------------------
    def check_running(self, disks: Iterable[RbdDisk], confirm_seconds: float = 3.0) -> RunningCheck:
        """For a VM running on this node: any client of another node on its disks (watcher or
        lock owner) is a split brain; a disk this node no longer watches means our QEMU was
        cut off (blocklisted).  A finding counts only when it persists for `confirm_seconds`
        (an admin's short `rbd snap create` elsewhere, an OSD failover re-registering our
        watch); a clean result costs a few milliseconds per disk."""
        guarded = [d for d in disks if d.guarded]
        if self.policy is Policy.OFF or not guarded:
            return RunningCheck()
        end = time.monotonic() + confirm_seconds
        while True:
            check = self._running_findings(guarded)
            if check.ok or time.monotonic() + self.poll_interval > end:
                return check
            time.sleep(self.poll_interval)

    def _running_findings(self, disks: list[RbdDisk]) -> RunningCheck:
        check = RunningCheck()
        for disk in disks:
            s = read_image_state(self.session, disk)
            others = [w.addr for w in s.watchers if w.addr.ip not in self.own_ips | self.watch_only_ips]
            others += [h.addr for h in s.holders if h.addr.ip not in self.own_ips and h.addr not in others]
            if others:
                check.split_brain.append(f"{disk.spec} is also used by "
                                         + ", ".join(self._who(a) for a in others))
            if not any(w.addr.ip in self.own_ips for w in s.watchers):
                check.lost_watch.append(f"{disk.spec} is not watched by this node")
        return check

    # ---- stop -------------------------------------------------------------------------------
    def after_stop(self, disks: Iterable[RbdDisk], deadline: DeadlineLike) -> GuardResult:
        """After libvirt reports the VM stopped: no client of this node may still have its disks
        open.  A clean QEMU exit drops its watch at once; a killed one leaves it for the watch
        timeout.  Waits briefly, then (policy recover) blocklists exactly those addresses so
        nothing from this node can write any more.  RbdError (e.g. MissingCaps) means they
        could not be cut off."""
        guarded = [d for d in disks if d.guarded]
        if self.policy is Policy.OFF or not guarded:
            return GuardResult(True, "not checked")
        limit = time.monotonic() + min(2.0, max(0.0, deadline.remaining() - self.reserve))
        while True:
            states = [read_image_state(self.session, d) for d in guarded]
            ours = {w.addr for s in states for w in s.watchers if w.addr.ip in self.own_ips}
            if not ours or time.monotonic() + self.poll_interval > limit:
                break
            time.sleep(self.poll_interval)
        if not ours:
            return GuardResult(True, "no client of this node has the disks open", states=states)
        if self.policy is not Policy.RECOVER:
            # A killed QEMU's watch lingers for the watch timeout: normal after a destroy, and
            # without `recover` we do not fence, so this is only reported.
            return GuardResult(True, "watch(es) of this node's client(s) "
                               + ", ".join(map(str, sorted(ours, key=str)))
                               + " still present (rbd_lock_policy=check: not fenced)", states=states)
        actions = []
        for addr in sorted(ours, key=str):
            self.session.blocklist_add(str(addr), self.blocklist_seconds)
            actions.append(f"blocklisted leftover client {addr}")
        return GuardResult(True, "; ".join(actions), actions, states)

    # ---- manual release (ravada-rbd) ---------------------------------------------------------
    def release(self, disk: RbdDisk, dry_run: bool = False,
                fenced_nodes: Iterable[str] = ()) -> GuardResult:
        """Clear a stale lock on one image, now, without waiting.  Watchers block the release,
        except those of `fenced_nodes` (confirmed fenced by the caller): their exact addresses
        are blocklisted first, which drops their watches at once."""
        state = read_image_state(self.session, disk)
        fenced_ips = frozenset(ip for n in fenced_nodes for ip in self.node_map.ips_of(n))
        blockers = self._blockers([state], fenced_ips)
        if blockers:
            return GuardResult(False, "refusing: " + blockers, states=[state])
        to_fence = sorted({w.addr for w in state.watchers} | {h.addr for h in state.holders}, key=str)
        if not to_fence:
            return GuardResult(True, f"{disk.spec} is free: nothing to do", states=[state])
        plan = [f"blocklist {self._who(a)}" for a in to_fence]
        plan += [f"break lock of {self._who(h.addr)}" for h in state.holders]
        if dry_run:
            return GuardResult(True, "would " + "; ".join(plan), plan, [state])
        for addr in to_fence:
            self.session.blocklist_add(str(addr), self.blocklist_seconds)
        for holder in state.holders:
            self._break(disk, holder)
        after = read_image_state(self.session, disk)
        if after.watchers or after.holders:
            left = self._blockers([after]) or "lock still present"
            return GuardResult(False, f"{disk.spec} still in use after release: {left}", plan, [after])
        return GuardResult(True, "released: " + "; ".join(plan), plan, [after])

    # ---- helpers ----------------------------------------------------------------------------
    def _who(self, addr: ClientAddr) -> str:
        return self.node_map.describe(addr, self.own_ips)


def _key(disk: RbdDisk) -> tuple[str, str, str]:
    return (disk.pool, disk.namespace, disk.image)
