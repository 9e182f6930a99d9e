"""ravada-snapshot on the real stack: throw-away Ceph, a private libvirtd and a tiny real Linux
guest (Debian kernel, busybox) running the real qemu-guest-agent on an RBD disk.  The agent's
fsfreeze hook writes 'tinyguest-hook: freeze|thaw' to the guest's console: that is how the
tests see that the guest really was frozen and thawed."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
import rbd

import rbd_domains
from support.libvirt_node import PYTHON, REPO
from tiny_guest import Guest, build

pytestmark = [pytest.mark.ceph, pytest.mark.libvirt]
SNAPSHOT = os.path.join(REPO, "tools", "ravada-snapshot")


@pytest.fixture(scope="session")
def guest_files(tmp_path_factory):
    return build(tmp_path_factory.getbasetemp() / "tinyguest")


@pytest.fixture(scope="module")
def boot(ceph, libvirt_node, guest_files, tmp_path_factory):
    """boot(cmdline_extra='', agent=True) -> a ready Guest on a fresh RBD image; all destroyed
    at the end of the module."""
    workdir = tmp_path_factory.mktemp("guests")
    conn = libvirt_node.connect()
    secret = rbd_domains.ceph_secret(conn, ceph)
    guests: list[Guest] = []

    def start(cmdline_extra: str = "", agent: bool = True) -> Guest:
        name = f"tiny{uuid.uuid4().hex[:6]}"
        guest = Guest(libvirt_node, ceph, guest_files, workdir, name, ceph.create_image(name),
                      secret, rbd_domains.NODE_USER, cmdline_extra)
        guests.append(guest)
        guest.wait_ready(agent=agent)
        return guest

    yield start
    for guest in guests:
        guest.destroy()
    conn.close()


@pytest.fixture(scope="module")
def agent_guest(boot):
    return boot()


@pytest.fixture(scope="module")
def slow_freeze_guest(boot):
    """Its fsfreeze hook sleeps 12 s before the agent freezes: a freeze that hangs."""
    return boot("ravada.freezedelay=12")


def snapshot_cmd(ceph, libvirt_node, *argv: str, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, SNAPSHOT, *ceph_args(ceph), "--uri", libvirt_node.uri, *argv],
                          capture_output=True, text=True, timeout=timeout, **popen)


def ceph_args(ceph) -> list[str]:
    return ["--conf", str(ceph.conf), "--id", "admin", "--keyring", str(ceph.admin_keyring)]


def snaps_of(ceph, spec: str) -> list[str]:
    pool, _, name = spec.partition("/")
    cluster = ceph.client("admin")
    try:
        with cluster.open_ioctx(pool) as io, rbd.Image(io, name, read_only=True) as image:
            return [s["name"] for s in image.list_snaps()]
    finally:
        cluster.shutdown()


def revive_osd(ceph) -> None:
    """After SIGSTOP/SIGCONT the lone OSD's placement groups wait for a read lease no peer can
    renew ('waiting for readable'); marked down, the OSD re-peers at once.  Until I/O works
    again, so the session's later tests find a healthy cluster."""
    ceph.mon_command(prefix="osd down", ids=["0"])
    end = time.monotonic() + 90
    while time.monotonic() < end:
        probe = subprocess.run(["rbd", *ceph_args(ceph), "--rados-osd-op-timeout", "5", "ls", "-l", "vmpool"],
                               capture_output=True, timeout=30)
        if probe.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError("the OSD did not serve I/O again within 90 s")


def hook_events(guest: Guest) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in guest.console_text().splitlines()
            if line.startswith("tinyguest-hook:")]


def test_create_freezes_snapshots_and_thaws_a_guest_with_an_agent(ceph, libvirt_node, agent_guest):
    before = hook_events(agent_guest)
    done = snapshot_cmd(ceph, libvirt_node, "create", agent_guest.name)
    assert done.returncode == 0, done.stderr
    name = done.stdout.split(":")[0]
    assert name.startswith("ravada-") and "file systems frozen" in done.stdout, done.stdout
    assert snaps_of(ceph, agent_guest.image) == [name]
    # the agent really froze and thawed the guest's file system, in that order
    assert hook_events(agent_guest)[len(before):] == ["freeze", "thaw"]
    assert agent_guest.fsfreeze_status() == "thawed"
    # the snapshot holds the guest's file system
    listing = snapshot_cmd(ceph, libvirt_node, "list", agent_guest.name)
    assert listing.returncode == 0 and listing.stdout.startswith(name), listing


def test_data_written_before_the_snapshot_is_in_it(ceph, libvirt_node, agent_guest, tmp_path):
    """The guest writes a file without syncing; the freeze flushes it into the snapshot."""
    agent_guest.sh("head -c 3000000 /dev/urandom > /data/unsynced; sha256sum /data/unsynced > /tmp/sum")
    expected = agent_guest.sh("cut -d' ' -f1 /tmp/sum").strip()
    done = snapshot_cmd(ceph, libvirt_node, "create", agent_guest.name)
    assert done.returncode == 0, done.stderr
    name = done.stdout.split(":")[0]
    raw = tmp_path / "snap.ext4"
    export = subprocess.run(["rbd", *ceph_args(ceph), "export", f"{agent_guest.image}@{name}", str(raw)],
                            capture_output=True, text=True, timeout=60)
    assert export.returncode == 0, export.stderr
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, f"the frozen snapshot's file system is not clean:\n{fsck.stdout}"
    dumped = subprocess.run(["debugfs", "-R", "cat /unsynced", str(raw)], capture_output=True)
    import hashlib
    assert hashlib.sha256(dumped.stdout).hexdigest() == expected


def test_list_keep_and_delete(ceph, libvirt_node, agent_guest):
    for _ in range(3):
        time.sleep(1.1)               # names have a one-second resolution
        assert snapshot_cmd(ceph, libvirt_node, "create", agent_guest.name).returncode == 0
    ours = sorted(s for s in snaps_of(ceph, agent_guest.image) if s.startswith("ravada-"))
    time.sleep(1.1)
    kept = snapshot_cmd(ceph, libvirt_node, "create", "--keep", "2", agent_guest.name)
    assert kept.returncode == 0, kept.stderr
    now = sorted(snaps_of(ceph, agent_guest.image))
    assert len(now) == 2 and now[0] == ours[-1] and "deleted" in kept.stdout
    gone = snapshot_cmd(ceph, libvirt_node, "delete", agent_guest.name, now[0])
    assert gone.returncode == 0, gone.stderr
    assert snaps_of(ceph, agent_guest.image) == now[1:]
    assert snapshot_cmd(ceph, libvirt_node, "delete", agent_guest.name, now[0]).returncode == 1
    foreign = snapshot_cmd(ceph, libvirt_node, "delete", agent_guest.name, "admin-snap")
    assert foreign.returncode == 1 and "not a ravada snapshot" in foreign.stderr


def test_a_guest_left_frozen_is_found_and_thawed(ceph, libvirt_node, agent_guest):
    agent_guest.domain.fsFreeze()          # what a run killed with SIGKILL leaves behind
    assert agent_guest.fsfreeze_status() == "frozen"
    done = snapshot_cmd(ceph, libvirt_node, "create", agent_guest.name)
    assert done.returncode == 0, done.stderr
    assert "left frozen" in done.stderr and agent_guest.fsfreeze_status() == "thawed"
    agent_guest.domain.fsFreeze()
    thawed = snapshot_cmd(ceph, libvirt_node, "thaw", agent_guest.name)
    assert thawed.returncode == 0 and "was frozen, thawed" in thawed.stdout, thawed
    assert agent_guest.fsfreeze_status() == "thawed"


def test_a_guest_without_an_agent_gets_a_crash_consistent_snapshot(ceph, libvirt_node, boot):
    guest = boot("ravada.noagent", agent=False)
    refused = snapshot_cmd(ceph, libvirt_node, "create", "--require-freeze", guest.name)
    assert refused.returncode == 1 and "guest agent not running" in refused.stderr, refused
    assert snaps_of(ceph, guest.image) == []
    done = snapshot_cmd(ceph, libvirt_node, "create", guest.name)
    assert done.returncode == 0, done.stderr
    assert "only crash-consistent" in done.stderr and "crash-consistent" in done.stdout
    assert len(snaps_of(ceph, guest.image)) == 1


def test_a_hanging_freeze_is_thawed_and_reported_within_the_deadline(ceph, libvirt_node, slow_freeze_guest):
    guest = slow_freeze_guest
    before = len(hook_events(guest))
    began = time.monotonic()
    done = snapshot_cmd(ceph, libvirt_node, "--timeout", "40", "create", "--freeze-timeout", "3", guest.name)
    took = time.monotonic() - began
    assert done.returncode == 1, done
    assert "freezing" in done.stderr and "failed" in done.stderr, done.stderr
    assert took < 40, took
    assert hook_events(guest)[before:] == ["freeze", "thaw"], guest.console_text()[-500:]
    assert guest.fsfreeze_status() == "thawed"
    assert snaps_of(ceph, guest.image) == []


def test_sigterm_during_the_freeze_still_thaws(ceph, libvirt_node, slow_freeze_guest):
    guest = slow_freeze_guest
    before = len(hook_events(guest))
    proc = subprocess.Popen([PYTHON, SNAPSHOT, *ceph_args(ceph), "--uri", libvirt_node.uri, "--timeout", "40",
                             "create", "--freeze-timeout", "30", guest.name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)                      # the hook is sleeping: the freeze is in progress
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and "interrupted by SIGTERM" in err, (out, err)
    assert hook_events(guest)[before:] == ["freeze", "thaw"]
    assert guest.fsfreeze_status() == "thawed"
    assert snaps_of(ceph, guest.image) == []


def test_ceph_hanging_during_the_freeze_is_reported_and_a_later_thaw_fixes_it(ceph, libvirt_node, boot):
    """The OSD stops answering while the guest starts to freeze: the guest's freeze cannot
    finish (it flushes to the RBD disk), so neither can a thaw.  The command must not hang: it
    says the guest MAY BE LEFT FROZEN within its deadline; once Ceph is back,
    `ravada-snapshot thaw` leaves the guest thawed."""
    guest = boot("ravada.freezedelay=4")
    before = len(hook_events(guest))
    proc = subprocess.Popen([PYTHON, SNAPSHOT, *ceph_args(ceph), "--ceph-timeout", "3", "--uri",
                             libvirt_node.uri, "--timeout", "30", "create", guest.name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    osd = ceph.pids["osd.0"]
    stopped = False
    began = time.monotonic()
    try:
        while len(hook_events(guest)) == before and time.monotonic() < began + 20:
            time.sleep(0.1)          # the freeze has begun (its hook sleeps 4 s, then it freezes)
        assert len(hook_events(guest)) > before, "the freeze never started"
        os.kill(osd, signal.SIGSTOP)
        stopped = True
        out, err = proc.communicate(timeout=45)
        took = time.monotonic() - began
    finally:
        if stopped:
            os.kill(osd, signal.SIGCONT)
            revive_osd(ceph)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and "MAY BE LEFT FROZEN" in err and "ravada-snapshot thaw" in err, (out, err)
    assert took < 32, took
    thawed = snapshot_cmd(ceph, libvirt_node, "--timeout", "60", "thaw", guest.name)
    assert thawed.returncode == 0, thawed
    assert guest.fsfreeze_status() == "thawed"
    # libvirt may still run a thaw the killed command queued: the agent runs its hook on every
    # thaw, so 'thaw' can appear more than once (after the one freeze)
    events = hook_events(guest)[before:]
    assert events[0] == "freeze" and events[1:] and set(events[1:]) == {"thaw"}, events
