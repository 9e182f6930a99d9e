"""ocf:ravada:basesync's logic with fakes: the manifest as hostile input, holder order, space
refusal, in-use detection from qemu-img's and libvirt's output, the worker's decisions, the
status monitor reports, and parameters refused with exit 6."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from ocf_ravada.basesync import inuse, space, status
from ocf_ravada.basesync.fetch import candidates
from ocf_ravada.basesync.manifest import Base, Manifest, ManifestError, in_sync_order, parse
from ocf_ravada.basesync.process import start_ticks
from ocf_ravada.basesync.transfer import SshOptions, classify, rsync_argv
from ocf_ravada.deadline import Deadline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(REPO, "agents", "basesync")
SHA = "ab" * 32


def entry(name="deb12", **fields):
    return {"name": name, "file": f"{name}.qcow2", "size": 10, "sha256": SHA, **fields}


def doc(*entries, **top):
    return json.dumps({"version": 1, "serial": 3, "bases": list(entries), **top}).encode()


def test_a_good_manifest_parses():
    manifest = parse(doc(entry(), entry("desk", backing="deb12", nodes=["n2"])))
    assert manifest.serial == 3
    assert [b.name for b in manifest.chain("desk")] == ["deb12", "desk"]
    assert [b.name for b in manifest.wanted_on("n1")] == ["deb12"]
    assert [b.name for b in manifest.wanted_on("n2")] == ["deb12", "desk"]
    assert parse(manifest.to_bytes()) == manifest


@pytest.mark.parametrize("raw, why", [
    (b"[]", "not a JSON object"),
    (b'{"version": 2, "bases": []}', "unsupported manifest version"),
    (b'{"version": 1, "bases": {}}', "'bases' must be a list"),
    (b'{"version": 1, "version": 1, "bases": []}', "duplicate key"),
    (b'{"version": 1, "serial": NaN, "bases": []}', "not a number"),
    (b'{"version": 1, "serial": true, "bases": []}', "serial"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[" * 100000, "nests too deeply"),
    (b" " * (1024 * 1024 + 1), "larger than"),
    (doc(entry(name="../etc")), "invalid name"),
    (doc(entry(name="a b")), "invalid name"),
    (doc(entry(file="../../etc/passwd")), "invalid file"),
    (doc(entry(file=".basesync")), "invalid file"),
    (doc(entry(file="-rf")), "invalid file"),
    (doc(entry(size=0)), "size"),
    (doc(entry(size=-1)), "size"),
    (doc(entry(size=1.5)), "size"),
    (doc(entry(size=2 ** 60)), "size"),
    (doc(entry(sha256="AB" * 32)), "invalid sha256"),
    (doc(entry(sha256="ab")), "invalid sha256"),
    (doc(entry(format="vmdk")), "format"),
    (doc(entry(backing="nothere")), "not in the manifest"),
    (doc(entry("a", backing="b"), entry("b", backing="a")), "loops"),
    (doc(entry(nodes="n1")), "nodes must be a list"),
    (doc(entry(nodes=["n 1"])), "nodes must be a list"),
    (doc(entry(), entry()), "two bases with name"),
    (doc(entry("a"), {**entry("b"), "file": "a.qcow2"}), "two bases with file"),
    (doc(*[entry(f"b{i}") for i in range(1001)]), "more than 1000"),
])
def test_a_hostile_manifest_is_refused_with_a_reason(raw, why):
    with pytest.raises(ManifestError, match=why):
        parse(raw)


def test_a_long_backing_chain_is_refused():
    chain = [entry("b0")] + [entry(f"b{i}", backing=f"b{i - 1}") for i in range(1, 20)]
    with pytest.raises(ManifestError, match="longer than"):
        parse(doc(*chain))


def test_sync_order_puts_backing_bases_first():
    a, b, c = Base("a", "a", 1, SHA), Base("b", "b", 1, SHA, backing="c"), Base("c", "c", 1, SHA, backing="a")
    assert [x.name for x in in_sync_order([b, c, a], {x.name: x for x in (a, b, c)})] == ["a", "c", "b"]


def test_holders_are_tried_predecessor_first_then_verified_copies_then_the_main_node():
    chain = ["main", "n1", "n2", "n3"]
    assert candidates("n3", "main", chain, set()) == ["n2", "main", "n1"]
    assert candidates("n3", "main", chain, {"n1"}) == ["n2", "n1", "main"]
    assert candidates("n1", "main", chain, set()) == ["main"]
    assert candidates("n9", "main", chain, {"n2"}) == ["n2", "main"]   # not in the chain (yet)
    assert "n3" not in candidates("n3", "main", chain, {"n3"})


def test_space_is_refused_below_the_reserve(tmp_path, monkeypatch):
    monkeypatch.setattr(space, "free_bytes", lambda _d: 100 * space.MIB)
    space.check(str(tmp_path), 50 * space.MIB, 50, "base x")
    with pytest.raises(space.NoSpace, match=r"needs 51 MiB, 100 MiB free, reserve 50 MiB"):
        space.check(str(tmp_path), 51 * space.MIB, 50, "base x")


def test_backing_chains_are_read_from_qemu_img_json():
    out = json.dumps([
        {"filename": "/d/clone.qcow2", "full-backing-filename": "/d/desk.qcow2"},
        {"filename": "/d/desk.qcow2", "backing-filename": "deb12.qcow2"},
        {"filename": "/d/deb12.qcow2"},
    ]).encode()
    assert inuse.parse_backing_chain(out, "/d/clone.qcow2") == {"/d/desk.qcow2", "/d/deb12.qcow2"}


@pytest.mark.parametrize("out", [b"not json", b'"text"', b"[1]", b"[" * 100000, b" " * (5 * 1024 * 1024)])
def test_unusable_qemu_img_output_means_use_unknown(out):
    with pytest.raises(inuse.InUseUnknown):
        inuse.parse_backing_chain(out, "/d/x")


def test_domain_disks_come_from_the_xml_safely():
    xml = """<domain><devices>
      <disk type='file'><source file='/d/clone.qcow2'/>
        <backingStore type='file'><source file='/d/deb12.qcow2'/></backingStore></disk>
      <disk type='network'><source protocol='rbd' name='pool/img'/></disk>
    </devices></domain>"""
    assert inuse.domain_disks(xml) == {"/d/clone.qcow2", "/d/deb12.qcow2"}
    with pytest.raises(inuse.InUseUnknown):
        inuse.domain_disks('<!DOCTYPE d [<!ENTITY x "y">]><domain/>')


def test_only_qcow2_files_are_asked_about(tmp_path):
    (tmp_path / "raw.img").write_bytes(b"\0" * 10)
    (tmp_path / "q.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 10)
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "q.qcow2", tmp_path / "link")
    assert [n for n in sorted(os.listdir(tmp_path)) if inuse.is_qcow2(str(tmp_path / n))] == ["q.qcow2"]


def test_use_is_unknown_when_qemu_img_is_missing(tmp_path, monkeypatch):
    (tmp_path / "q.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 10)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(inuse.InUseUnknown, match="qemu-img is not installed"):
        inuse.overlay_users(str(tmp_path), set(), Deadline(5))


def test_monitor_fails_only_for_what_cannot_be_repaired():
    report = {"manifest": {"serial": 1}, "bases": {
        "a": {"state": "verified"}, "b": {"state": "fetching", "bytes": 50 * 2 ** 20, "total": 100 * 2 ** 20,
                                         "rate": 2 ** 20, "eta": 50, "holder": "n1"},
        "c": {"state": "waiting", "reason": "no holder"}, "d": {"state": "kept"}}}
    assert status.failures(report) == []
    line = status.summary(report)
    assert line.startswith("verified 1/3")
    assert "fetching b 50/100 MiB (50%) 1.0 MiB/s eta 50s from n1" in line
    report["bases"]["c"] = {"state": "refused", "reason": "not enough space"}
    assert status.failures(report) == ["base c: not enough space"]
    assert status.failures({"manifest": {"invalid": True, "error": "bad"}, "bases": {}}) == ["bad"]
    assert status.summary({"bases": {"a": {"state": "verified"}}}) == "in sync 1/1"


def test_ssh_always_verifies_host_keys_and_refuses_unsafe_options():
    shell = SshOptions(key="/k", known_hosts="/kh", port=2222).shell()
    assert "StrictHostKeyChecking=yes" in shell and "BatchMode=yes" in shell
    assert "StrictHostKeyChecking=no" not in shell
    with pytest.raises(ValueError):
        SshOptions(key="/k -o ProxyCommand=sh").shell()
    argv = rsync_argv(SshOptions(bwlimit_kib=100), "fe80::1", "x", "/y")
    assert argv[-2:] == ["[fe80::1]:x", "/y"] and "--append" in argv and "--bwlimit=100" in argv


def test_rsync_outcomes_are_classified():
    assert classify(0, "").ok
    assert classify(23, 'rsync: [sender] link_stat "x" failed: No such file or directory (2)').missing
    assert classify(24, "file has vanished").missing
    assert classify(12, "open failed (race detected): .basesync/x No such file or directory rsync: connection "
                        "unexpectedly closed").missing      # rrsync's own refusal
    assert classify(255, "Host key verification failed.").unreachable
    assert classify(11, "write failed: No space left on device (28)").no_space
    assert not classify(11, "other").ok


def test_the_worker_start_time_identifies_it():
    assert start_ticks(os.getpid()) == start_ticks(os.getpid()) is not None
    assert start_ticks(2 ** 22 + 1) is None


def run_agent(action, **params):
    env = {"PATH": os.environ["PATH"], "HA_RSCTMP": "/nonexistent-rsctmp"}
    env.update({f"OCF_RESKEY_{k}": v for k, v in params.items()})
    return subprocess.run(["/usr/bin/python3", AGENT, action], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("params", [
    {},
    {"source": "a b"},
    {"source": "n1", "directory": "relative"},
    {"source": "n1", "directory": "/a b"},
    {"source": "n1", "ssh_key": "/k;rm"},
    {"source": "n1", "ssh_port": "0"},
    {"source": "n1", "ssh_port": "22x"},
    {"source": "n1", "ssh_user": "root;x"},
    {"source": "n1", "reserve": "-1"},
    {"source": "n1", "concurrency": "0"},
    {"source": "n1", "hosts": "n2"},
    {"source": "n1", "hosts": "n2=a;b"},
    {"source": "n1", "bwlimit": "1e3"},
])
def test_bad_parameters_exit_6_with_one_reason(params):
    done = run_agent("validate-all", **params)
    assert done.returncode == 6, done.stderr
    assert len([l for l in done.stderr.splitlines() if l.startswith("ocf-exit-reason:")]) == 1


def test_probes_and_stop_work_without_state():
    assert run_agent("monitor", source="n1").returncode == 7
    assert run_agent("stop", source="a b").returncode == 0
    assert run_agent("meta-data").returncode == 0


class RecordingCluster:
    def __init__(self):
        self.attributes = {}

    def refresh(self): pass
    def members(self): return ["main", "n1"]
    def holders(self, name, digest): return set()
    def published(self): return dict(self.attributes)
    def publish(self, name, digest): self.attributes[name] = digest
    def withdraw(self, name): self.attributes.pop(name, None)
    def set_status(self, text): self.status_text = text


def main_node(tmp_path, monkeypatch, used=frozenset()):
    from ocf_ravada.basesync import worker as worker_module
    from ocf_ravada.log import Log

    monkeypatch.setattr(inuse, "files_in_use", lambda directory, bases, uri, deadline: set(used))
    config = worker_module.Config(node="main", source="main", directory=str(tmp_path), resource="r",
                                  ssh=SshOptions(), hosts={}, reserve_mib=0, concurrency=1, poll_interval=1,
                                  stall_timeout=2, pace_percent=0, hypervisor=None, in_cluster=False, state_dir=str(tmp_path))
    return worker_module.Worker(config, RecordingCluster(), Log("basesync", "t", {}))


def write_manifest(tmp_path, content: bytes):
    import hashlib

    (tmp_path / "base.img").write_bytes(content)
    base = Base("deb12", "base.img", len(content), hashlib.sha256(content).hexdigest(), "raw")
    (tmp_path / ".basesync").mkdir(exist_ok=True)
    (tmp_path / ".basesync" / "manifest.json").write_bytes(Manifest((base,), 1).to_bytes())
    return base


def test_the_main_node_publishes_its_verified_copies(tmp_path, monkeypatch):
    base = write_manifest(tmp_path, b"x" * 1000)
    node = main_node(tmp_path, monkeypatch)
    node.run_pass()
    assert node.cluster.attributes == {"deb12": base.sha256}
    assert status.failures(node.status) == []


def test_attributes_the_cluster_dropped_are_published_again_on_the_next_pass(tmp_path, monkeypatch):
    """Pacemaker drops a remote node's transient attributes when its connection moves (and
    every node's when it leaves): each pass compares with what the CIB holds now."""
    base = write_manifest(tmp_path, b"x" * 1000)
    node = main_node(tmp_path, monkeypatch)
    node.run_pass()
    node.cluster.attributes.clear()
    node.run_pass()
    assert node.cluster.attributes == {"deb12": base.sha256}


def test_a_wrong_copy_on_the_main_node_is_withdrawn_and_fails_monitor(tmp_path, monkeypatch):
    write_manifest(tmp_path, b"x" * 1000)
    node = main_node(tmp_path, monkeypatch)
    node.run_pass()
    (tmp_path / "base.img").write_bytes(b"y" * 1000)
    node.run_pass()
    assert node.cluster.attributes == {}
    assert node.status["bases"]["deb12"]["state"] == "source-missing"
    assert "main node" in status.failures(node.status)[0]


def test_a_wrong_copy_a_vm_uses_is_never_replaced(tmp_path, monkeypatch):
    write_manifest(tmp_path, b"x" * 1000)
    node = main_node(tmp_path, monkeypatch, used={str(tmp_path / "base.img")})
    node.config = node.config.__class__(**{**node.config.__dict__, "node": "n1"})
    (tmp_path / "base.img").write_bytes(b"y" * 1000)
    node.run_pass()
    assert (tmp_path / "base.img").read_bytes() == b"y" * 1000
    assert node.status["bases"]["deb12"]["state"] == "corrupt-in-use"
    assert node.cluster.attributes == {}


def test_an_invalid_manifest_fails_monitor_and_publishes_nothing(tmp_path, monkeypatch):
    (tmp_path / ".basesync").mkdir()
    (tmp_path / ".basesync" / "manifest.json").write_bytes(b'{"version": 1, "bases": [{"name": "../x"}]}')
    node = main_node(tmp_path, monkeypatch)
    node.run_pass()
    assert node.cluster.attributes == {}
    assert "invalid name" in status.failures(node.status)[0]
