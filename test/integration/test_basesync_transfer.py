"""ocf:ravada:basesync over REAL rsync and a REAL sshd, between directories on this host.

Two sshds on loopback addresses stand for the main node (127.0.0.1, serving main/) and a peer
(127.0.0.2, serving peer/), each with its own host key, known to the client only through a
known_hosts file, and the client key's forced command `rrsync -ro DIRECTORY`, as the README
sets them up. The node under test owns node/. libvirt is asked through its test driver.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time

import pytest

from ocf_ravada.basesync import process, verify
from ocf_ravada.basesync.admin import add, remove
from ocf_ravada.basesync.fetch import temporary_name
from ocf_ravada.basesync.manifest import MANIFEST_FILE
from ocf_ravada.basesync.status import failures
from ocf_ravada.basesync.transfer import SshOptions
from ocf_ravada.basesync.worker import Config, Worker
from ocf_ravada.log import Log
from support.stack import require_stack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(REPO, "agents", "basesync")
MIB = 1024 * 1024
ADDRESSES = {"main": "127.0.0.1", "peer": "127.0.0.2"}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Sshd:
    """One sshd serving `root` read-only to `client_key` (rrsync -ro as forced command)."""

    def __init__(self, work: str, address: str, port: int, root: str, client_pub: str) -> None:
        self.work = work
        os.makedirs(work)
        self.host_key = os.path.join(work, "host_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.host_key], check=True)
        with open(os.path.join(work, "authorized_keys"), "w") as handle:
            handle.write(f'command="/usr/bin/rrsync -ro {root}",restrict {client_pub}')
        self.config = os.path.join(work, "sshd_config")
        with open(self.config, "w") as handle:
            handle.write(f"""Port {port}
ListenAddress {address}
HostKey {self.host_key}
AuthorizedKeysFile {work}/authorized_keys
PermitRootLogin forced-commands-only
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {work}/sshd.pid
LogLevel ERROR
""")
        self.address, self.port = address, port
        self.proc: subprocess.Popen | None = None

    def known_host_line(self) -> str:
        with open(self.host_key + ".pub") as handle:
            kind, key = handle.read().split()[:2]
        return f"[{self.address}]:{self.port} {kind} {key}\n"

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", self.config],
                                     stderr=open(os.path.join(self.work, "sshd.log"), "w"))
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex((self.address, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd on {self.address}:{self.port} did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class FakeCluster:
    """Stands for Pacemaker: who holds what is set by the test; what is published is kept."""

    def __init__(self, members: list[str], holders: set[str] = frozenset()) -> None:
        self._members = members
        self.holder_nodes = set(holders)
        self.attributes: dict[str, str] = {}

    def refresh(self) -> None:
        pass

    def members(self) -> list[str]:
        return list(self._members)

    def holders(self, name: str, digest: str) -> set[str]:
        return set(self.holder_nodes)

    def published(self) -> dict[str, str]:
        return dict(self.attributes)

    def publish(self, name: str, digest: str) -> None:
        self.attributes[name] = digest

    def withdraw(self, name: str) -> None:
        self.attributes.pop(name, None)

    def set_status(self, text: str) -> None:
        pass


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    require_stack("basesync over real rsync/sshd", "rsync", "ssh", "sshd", "ssh-keygen", "qemu-img")
    work = str(tmp_path_factory.mktemp("basesync-ssh"))
    key = os.path.join(work, "client_key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    with open(key + ".pub") as handle:
        client_pub = handle.read().strip()
    made_run_sshd = not os.path.isdir("/run/sshd")
    os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege separation directory
    port = free_port()
    roots = {name: os.path.join(work, name) for name in ("main", "peer")}
    daemons = {name: Sshd(os.path.join(work, f"sshd-{name}"), ADDRESSES[name], port, roots[name], client_pub)
               for name in roots}
    known = os.path.join(work, "known_hosts")
    with open(known, "w") as handle:
        handle.writelines(d.known_host_line() for d in daemons.values())
    try:
        for daemon in daemons.values():
            daemon.start()
        yield {"work": work, "key": key, "known_hosts": known, "port": port, "daemons": daemons}
    finally:
        for daemon in daemons.values():
            daemon.stop()
        if made_run_sshd:
            os.rmdir("/run/sshd")


@pytest.fixture
def dirs(servers, tmp_path):
    """Fresh main/, peer/ (served by the sshds) and node/ for each test."""
    import shutil

    for name in ("main", "peer"):
        root = os.path.join(servers["work"], name)
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
    node = tmp_path / "node"
    node.mkdir()
    for daemon in servers["daemons"].values():
        if daemon.proc is None:
            daemon.start()
    return {"main": os.path.join(servers["work"], "main"), "peer": os.path.join(servers["work"], "peer"),
            "node": str(node)}


def random_file(path: str, size: int) -> str:
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def config(servers, directory: str, **overrides) -> Config:
    values = dict(node="me", source="main", directory=directory, resource="basesync",
                  ssh=SshOptions(user="root", port=servers["port"], key=servers["key"],
                                 known_hosts=servers["known_hosts"], io_timeout=10),
                  hosts=dict(ADDRESSES), reserve_mib=0, concurrency=1, poll_interval=1, stall_timeout=3,
                  pace_percent=0, hypervisor="test:///default", in_cluster=False, state_dir=os.path.dirname(directory))
    values.update(overrides)
    return Config(**values)


def worker(servers, directory: str, cluster: FakeCluster | None = None, **overrides) -> Worker:
    return Worker(config(servers, directory, **overrides), cluster or FakeCluster(["main", "me"]),
                  Log("basesync", "test", {}))


def agent(action: str, servers, directory: str, state_dir: str, **params) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HA_RSCTMP": state_dir, "OCF_RESOURCE_INSTANCE": "basesync",
           "OCF_RESKEY_CRM_meta_on_node": "me", "OCF_RESKEY_source": "main",
           "OCF_RESKEY_directory": directory, "OCF_RESKEY_ssh_key": servers["key"],
           "OCF_RESKEY_ssh_port": str(servers["port"]), "OCF_RESKEY_known_hosts": servers["known_hosts"],
           "OCF_RESKEY_hosts": " ".join(f"{n}={a}" for n, a in ADDRESSES.items()),
           "OCF_RESKEY_reserve": "0", "OCF_RESKEY_poll_interval": "1", "OCF_RESKEY_stall_timeout": "3",
           "OCF_RESKEY_hypervisor": "test:///default", "OCF_RESKEY_CRM_meta_timeout": "30000"}
    env.update({f"OCF_RESKEY_{k}": str(v) for k, v in params.items()})
    return subprocess.run(["/usr/bin/python3", AGENT, action], env=env, capture_output=True, text=True, timeout=60)


def status_of(state_dir: str) -> dict:
    with open(os.path.join(state_dir, "basesync-status-basesync.state")) as handle:
        return json.load(handle)


def wait_for(predicate, what: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_agent_syncs_a_base_verified_and_read_only_and_stops_its_worker(servers, dirs, tmp_path):
    digest = random_file(os.path.join(dirs["main"], "deb12.img"), 3 * MIB)
    add(dirs["main"], "deb12.img", "deb12", None)
    state = str(tmp_path / "rsctmp")
    os.makedirs(state)
    started = agent("start", servers, dirs["node"], state)
    assert started.returncode == 0, started.stderr
    try:
        copy = os.path.join(dirs["node"], "deb12.img")
        wait_for(lambda: os.path.exists(copy), "the copy")
        assert verify.file_digest(copy) == digest
        assert os.stat(copy).st_mode & 0o777 == 0o444
        wait_for(lambda: status_of(state)["bases"].get("deb12", {}).get("state") == "verified", "verified")
        monitored = agent("monitor", servers, dirs["node"], state, CRM_meta_interval="60000")
        assert monitored.returncode == 0, monitored.stderr
        assert "in sync 1/1" in monitored.stderr
        # A new base on the main node reaches the node on the next pass.
        random_file(os.path.join(dirs["main"], "win10.img"), 1 * MIB)
        add(dirs["main"], "win10.img", "win10", None)
        wait_for(lambda: status_of(state)["bases"].get("win10", {}).get("state") == "verified", "the new base")
        assert os.path.exists(os.path.join(dirs["node"], "win10.img"))
    finally:
        recorded = json.load(open(os.path.join(state, "basesync-basesync.state")))
        stopped = agent("stop", servers, dirs["node"], state)
    assert stopped.returncode == 0, stopped.stderr
    assert not process.alive(recorded["pid"], recorded["ticks"])   # gone (or a zombie of its reaper)
    assert agent("monitor", servers, dirs["node"], state).returncode == 7


def test_a_corrupted_copy_is_detected_and_repaired(servers, dirs):
    digest = random_file(os.path.join(dirs["main"], "deb12.img"), 2 * MIB)
    add(dirs["main"], "deb12.img", "deb12", None)
    node = worker(servers, dirs["node"])
    node.run_pass()
    copy = os.path.join(dirs["node"], "deb12.img")
    assert node.cluster.attributes == {"deb12": digest}
    with open(copy, "r+b") as handle:     # root writes through the read-only mode
        handle.seek(MIB)
        handle.write(b"\0corrupt\0")
    node.rehash_requested = True
    node.run_pass()
    assert verify.file_digest(copy) == digest
    assert node.cluster.attributes == {"deb12": digest}
    assert node.status["bases"]["deb12"]["state"] == "verified"


def test_an_interrupted_transfer_resumes_from_another_holder(servers, dirs, tmp_path):
    size = 24 * MIB
    digest = random_file(os.path.join(dirs["main"], "big.img"), size)
    add(dirs["main"], "big.img", "big", None)
    os.link(os.path.join(dirs["main"], "big.img"), os.path.join(dirs["peer"], "big.img"))
    state = str(tmp_path / "rsctmp")
    os.makedirs(state)
    assert agent("start", servers, dirs["node"], state, bwlimit=4096).returncode == 0
    partial = os.path.join(dirs["node"], ".basesync", "incoming", digest)
    try:
        wait_for(lambda: os.path.exists(partial) and os.path.getsize(partial) > 2 * MIB, "a partial copy")
    finally:
        assert agent("stop", servers, dirs["node"], state).returncode == 0
    interrupted_at = os.path.getsize(partial)
    assert 0 < interrupted_at < size
    assert not os.path.exists(os.path.join(dirs["node"], "big.img")), "a partial copy under its real name"
    servers["daemons"]["main"].stop()     # the main node is gone; the peer holds a verified copy
    node = worker(servers, dirs["node"], FakeCluster(["main", "me"], holders={"peer"}))
    node.run_pass()
    result = node.status["bases"]["big"]
    assert result["state"] == "verified", result
    assert result["holder"] == "peer"
    assert result["resumed_from"] >= interrupted_at
    assert verify.file_digest(os.path.join(dirs["node"], "big.img")) == digest
    assert not os.path.exists(partial)


@pytest.fixture
def small_tmpfs(tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield str(mountpoint)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_disk_too_small_is_refused_with_nothing_half_written(servers, dirs, small_tmpfs):
    random_file(os.path.join(dirs["main"], "big.img"), 6 * MIB)
    add(dirs["main"], "big.img", "big", None)
    node = worker(servers, small_tmpfs)
    node.run_pass()
    assert node.status["bases"]["big"]["state"] == "refused"
    assert "not enough space" in failures(node.status)[0]
    assert node.cluster.attributes == {}
    assert not os.path.exists(os.path.join(small_tmpfs, "big.img"))
    incoming = os.path.join(small_tmpfs, ".basesync", "incoming")
    assert not os.path.isdir(incoming) or os.listdir(incoming) == []


def test_a_base_a_qcow2_overlay_uses_is_kept_until_the_overlay_is_gone(servers, dirs):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(dirs["main"], "deb12.qcow2"), "64M"],
                   check=True)
    add(dirs["main"], "deb12.qcow2", "deb12", None)
    node = worker(servers, dirs["node"])
    node.run_pass()
    base = os.path.join(dirs["node"], "deb12.qcow2")
    assert os.path.exists(base) and "deb12" in node.cluster.attributes
    overlay = os.path.join(dirs["node"], "clone1.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay], check=True)
    remove(dirs["main"], "deb12")     # the base disappears from the main node's manifest
    node.run_pass()
    assert os.path.exists(base), "a base an overlay uses was deleted"
    assert node.status["bases"]["deb12"]["state"] == "kept"
    os.unlink(overlay)
    node.run_pass()
    assert not os.path.exists(base)
    assert node.cluster.attributes == {}


def test_an_unknown_host_key_is_never_accepted(servers, dirs, tmp_path):
    random_file(os.path.join(dirs["main"], "deb12.img"), MIB)
    add(dirs["main"], "deb12.img", "deb12", None)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = SshOptions(port=servers["port"], key=servers["key"], known_hosts=str(empty), io_timeout=5)
    node = worker(servers, dirs["node"], ssh=options)
    node.run_pass()
    assert not os.path.exists(os.path.join(dirs["node"], "deb12.img"))
    assert not os.path.exists(os.path.join(dirs["node"], MANIFEST_FILE))
    assert node.cluster.attributes == {}
    assert empty.read_text() == "", "ssh added an unverified host key"


def test_the_key_can_only_read_the_base_directory(servers, dirs, tmp_path):
    options = SshOptions(port=servers["port"], key=servers["key"], known_hosts=servers["known_hosts"])
    upload = tmp_path / "upload"
    upload.write_text("x")
    pushed = subprocess.run(["rsync", "-e", options.shell(), str(upload), "127.0.0.1:upload"],
                            capture_output=True, text=True, timeout=30)
    assert pushed.returncode != 0 and not os.path.exists(os.path.join(dirs["main"], "upload"))
    shell = subprocess.run(options.shell().split() + ["127.0.0.1", "id"], capture_output=True, text=True, timeout=30)
    assert "uid=" not in shell.stdout
    escaped = subprocess.run(["rsync", "-e", options.shell(), "127.0.0.1:../../etc/hostname", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=30)
    assert escaped.returncode != 0 and not os.path.exists(tmp_path / "x")


def test_a_new_base_on_a_backing_chain_is_synced_backing_first(servers, dirs):
    main = dirs["main"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(main, "deb12.qcow2"), "64M"], check=True)
    add(main, "deb12.qcow2", "deb12", None)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(main, "deb12.qcow2"), "-F", "qcow2",
                    os.path.join(main, "desktop.qcow2")], check=True)
    added = add(main, "desktop.qcow2", "desktop", ["me"])
    assert added.backing == "deb12"
    node = worker(servers, dirs["node"])
    node.run_pass()
    assert set(node.cluster.attributes) == {"deb12", "desktop"}
    other = worker(servers, dirs["peer"], node="other")   # not in desktop's node list
    other.run_pass()
    assert set(other.cluster.attributes) == {"deb12"}


def test_a_node_follows_a_peer_copy_that_is_still_arriving(servers, dirs):
    """The pipelined chain: `me` appends from the peer's temporary copy while the peer is still
    receiving it from the main node, and each verifies the whole SHA-256 before installing."""
    import threading

    size = 16 * MIB
    digest = random_file(os.path.join(dirs["main"], "big.img"), size)
    add(dirs["main"], "big.img", "big", None)
    chain = ["main", "me", "peer"]     # sorted after the main node: me, then peer
    slow = SshOptions(port=servers["port"], key=servers["key"], known_hosts=servers["known_hosts"],
                      io_timeout=10, bwlimit_kib=4096)
    peer = worker(servers, dirs["peer"], FakeCluster(chain), node="me", ssh=slow)
    # The node under test is the peer's follower: it stands after "me" in the chain and
    # reads the peer's directory through the peer's sshd (127.0.0.2).
    follower = worker(servers, dirs["node"], FakeCluster(chain), node="peer",
                      hosts={"main": "127.0.0.1", "me": "127.0.0.2"})
    seen_while_arriving = []

    def watch() -> None:
        partial = os.path.join(dirs["node"], temporary_name(peer_manifest_base()))
        while not os.path.exists(os.path.join(dirs["peer"], "big.img")):
            if os.path.exists(partial) and os.path.getsize(partial) > 0:
                seen_while_arriving.append(os.path.getsize(partial))
            time.sleep(0.05)

    def peer_manifest_base():
        from ocf_ravada.basesync.admin import load
        return load(dirs["main"]).by_name()["big"]

    upstream = threading.Thread(target=peer.run_pass)
    watcher = threading.Thread(target=watch)
    upstream.start()
    watcher.start()
    follower.run_pass()
    upstream.join()
    watcher.join()
    assert peer.status["bases"]["big"]["state"] == "verified"
    result = follower.status["bases"]["big"]
    assert result["state"] == "verified" and result["holder"] == "me", result
    assert seen_while_arriving, "the follower only started once the peer had the whole copy"
    assert verify.file_digest(os.path.join(dirs["node"], "big.img")) == digest


def test_a_node_with_followers_paces_its_copy_of_a_complete_base(servers, dirs):
    """It measures its first seconds at full speed, then asks rsync for `pace` of that rate;
    the copy still completes, verified."""
    size = 24 * MIB
    digest = random_file(os.path.join(dirs["main"], "big.img"), size)
    add(dirs["main"], "big.img", "big", None)
    capped = SshOptions(port=servers["port"], key=servers["key"], known_hosts=servers["known_hosts"],
                        io_timeout=10, bwlimit_kib=4096)
    node = worker(servers, dirs["node"], FakeCluster(["main", "me", "peer"]), ssh=capped, pace_percent=50)
    started = time.monotonic()
    node.run_pass()
    took = time.monotonic() - started
    assert node.status["bases"]["big"]["state"] == "verified"
    assert verify.file_digest(os.path.join(dirs["node"], "big.img")) == digest
    # About 4 s at 4 MiB/s, then the rest at about 2 MiB/s: clearly longer than 6 s at full speed.
    assert took > 8, took
