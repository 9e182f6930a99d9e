"""The RBD guard's waiting and deciding, on a fake clock and a fake Ceph: how long it waits for a
watch, when it gives up, whom it fences and in which order -- without sleeping.  The real-Ceph
tests (test/ceph) prove the same rules against librbd; these pin the timing logic down."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

pytest.importorskip("rados", reason="python3-rados (Debian's /usr/bin/python3)")

from ocf_ravada.rbd import guard as guard_module  # noqa: E402
from ocf_ravada.rbd import owner  # noqa: E402
from ocf_ravada.rbd.addresses import ClientAddr  # noqa: E402
from ocf_ravada.rbd.cluster import BlocklistEntry  # noqa: E402
from ocf_ravada.rbd.disks import RbdDisk  # noqa: E402
from ocf_ravada.rbd.guard import Policy, RbdGuard  # noqa: E402
from ocf_ravada.rbd.image_state import ImageState, Watcher  # noqa: E402
from ocf_ravada.rbd.nodes import NodeMap  # noqa: E402

DISK = RbdDisk("vms", "vm1")
OWN_IP, OTHER_IP = "10.0.0.1", "10.0.0.2"
FROZEN = f"{OTHER_IP}:0/4242"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


class FakeDeadline:
    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock, self.end = clock, clock.now + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - self.clock.now)


class FakeIoctx:
    def lock_exclusive(self, *args, **kwargs) -> None:
        pass

    def unlock(self, *args) -> None:
        pass


@dataclass
class FakeCeph:
    """A session: watchers of DISK (address -> fake time their watch ends), the record, the
    blocklist."""
    clock: FakeClock
    watchers: dict[str, float] = field(default_factory=dict)
    record: owner.OwnerRecord = field(default_factory=owner.OwnerRecord)
    blocklisted: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    # CephSession's interface, as far as the guard uses it
    def own_addr(self) -> ClientAddr:
        return ClientAddr(OWN_IP, 0, 1)

    def watch_timeout(self) -> float:
        return 30.0

    def ioctx(self, pool: str, namespace: str = "") -> FakeIoctx:
        return FakeIoctx()

    def blocklist_ls(self) -> list[BlocklistEntry]:
        return [BlocklistEntry(a, "") for a in self.blocklisted]

    def is_blocklisted(self, addr: str, entries=None) -> bool:
        return addr in self.blocklisted

    def blocklist_add(self, addr: str, expire_seconds: float = 0) -> None:
        self.events.append(f"blocklist {addr}")
        self.blocklisted.append(addr)

    def state(self, disk: RbdDisk) -> ImageState:
        watching = [a for a, until in self.watchers.items()
                    if self.clock.now < until and a not in self.blocklisted]
        return ImageState(disk, tuple(Watcher(ClientAddr.parse(a), 1, 1) for a in watching), "", ())


@pytest.fixture
def fake(monkeypatch):
    clock = FakeClock()
    ceph = FakeCeph(clock)
    monkeypatch.setattr(guard_module, "read_image_state", lambda session, disk: ceph.state(disk))
    monkeypatch.setattr(owner, "load", lambda session, disk: ceph.record)

    def store(session, disk, old, new):
        ceph.events.append(f"record {new.describe()}")
        ceph.record = new
        return new

    monkeypatch.setattr(owner, "store", store)
    monkeypatch.setattr(guard_module, "pacemaker_fenced", lambda node, timeout, after: None)
    return ceph


def make_guard(ceph: FakeCeph, policy: Policy = Policy.RECOVER, log=None) -> RbdGuard:
    return RbdGuard(ceph, policy, node_map=NodeMap({"node1": (OWN_IP,), "node2": (OTHER_IP,)}),
                    local_node="node1", clock=ceph.clock, sleep=ceph.clock.sleep, log=log)


def test_a_watch_that_never_goes_away_is_waited_for_exactly_the_watch_timeout(fake):
    fake.watchers[FROZEN] = float("inf")
    lines = []
    result = make_guard(fake, log=lines.append).before_start([DISK], FakeDeadline(fake.clock, 120))
    assert not result.allowed and "is open by" in result.reason and "node2" in result.reason
    assert 34.0 <= fake.clock.slept <= 35.0           # watch timeout 30 s + margin 5 s, polled
    assert len([line for line in lines if "waiting up to" in line]) == 1
    assert fake.events == []                          # nothing fenced, no record written


def test_the_wait_never_runs_past_the_deadline_minus_the_reserve(fake):
    fake.watchers[FROZEN] = float("inf")
    result = make_guard(fake).before_start([DISK], FakeDeadline(fake.clock, 12))
    assert not result.allowed
    assert fake.clock.slept <= 12 - 5.0               # the reserve is kept for the start itself


def test_a_frozen_owner_whose_watch_expires_is_fenced_before_the_record_changes(fake):
    fake.watchers[FROZEN] = fake.clock.now + 7       # frozen: its watch expires 7 s later
    result = make_guard(fake).before_start([DISK], FakeDeadline(fake.clock, 120))
    assert result.allowed, result.reason
    assert fake.events[0] == f"blocklist {FROZEN}"   # fenced first ...
    assert fake.events[1].startswith("record node1")  # ... then this node recorded
    assert 7 <= fake.clock.slept <= 7 + 0.5 + 3.0 + 0.5   # the wait, then the 3 s confirmation


def test_a_recorded_owner_nobody_saw_is_fenced_without_any_wait(fake):
    fake.record = owner.OwnerRecord().owned_by(owner.Party("node2", (OTHER_IP,), (FROZEN,)))
    result = make_guard(fake).before_start([DISK], FakeDeadline(fake.clock, 120))
    assert result.allowed, result.reason
    assert fake.events[0] == f"blocklist {FROZEN}"
    assert fake.clock.slept == pytest.approx(3.0)     # only the stale confirmation


def test_a_recorded_start_without_address_is_refused(fake):
    fake.record = owner.OwnerRecord().owned_by(owner.Party("node2", (OTHER_IP,)))
    result = make_guard(fake).before_start([DISK], FakeDeadline(fake.clock, 120))
    assert not result.allowed and "node2" in result.reason and "unknown" in result.reason
    assert fake.events == []


def test_the_monitor_ignores_a_short_visit_and_confirms_a_lasting_one(fake):
    ours = f"{OWN_IP}:0/7"
    fake.record = owner.OwnerRecord().owned_by(owner.Party("node1", (OWN_IP,), (ours,)))
    fake.watchers = {ours: float("inf"), f"{OTHER_IP}:0/9": fake.clock.now + 1.2}   # rbd snap
    assert make_guard(fake).check_running([DISK], confirm_seconds=3.0).ok
    fake.watchers[f"{OTHER_IP}:0/9"] = float("inf")
    start = fake.clock.now
    check = make_guard(fake).check_running([DISK], confirm_seconds=3.0)
    assert check.split_brain and "node2" in check.reason
    assert 2.5 <= fake.clock.now - start <= 3.0


def test_the_monitor_fills_in_the_address_of_a_vm_started_before_records_existed(fake):
    ours = f"{OWN_IP}:0/7"
    fake.watchers = {ours: float("inf")}
    assert make_guard(fake).check_running([DISK]).ok
    assert fake.record.owner == owner.Party("node1", (OWN_IP,), (ours,))
