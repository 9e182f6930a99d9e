"""ravada-backup on the real stack: a tiny real guest (real qemu-guest-agent) with two RBD disks
of the throw-away Ceph (its file system on the first, raw writes to the second); full and
incremental backups of it while it writes, each image restored into a new image and compared
with the source at that snapshot; damaged backups refused."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

import rbd_domains
from support.libvirt_node import PYTHON, REPO
from tiny_guest import Guest, build, image_sha256

pytestmark = [pytest.mark.ceph, pytest.mark.libvirt]
BACKUP = os.path.join(REPO, "tools", "ravada-backup")


@pytest.fixture(scope="module")
def guest(ceph, libvirt_node, tmp_path_factory):
    files = build(tmp_path_factory.getbasetemp() / "tinyguest")
    conn = libvirt_node.connect()
    name = f"bkp{uuid.uuid4().hex[:6]}"
    running = Guest(libvirt_node, ceph, files, tmp_path_factory.mktemp("bguest"), name,
                    ceph.create_image(name), rbd_domains.ceph_secret(conn, ceph), rbd_domains.NODE_USER,
                    extra_images=(ceph.create_image(f"{name}-data"),))
    running.data_image = f"{running.image}-data"
    try:
        running.wait_ready()
        yield running
    finally:
        running.destroy()
        conn.close()


def ceph_args(ceph) -> list[str]:
    return ["--conf", str(ceph.conf), "--id", "admin", "--keyring", str(ceph.admin_keyring)]


def backup_cmd(ceph, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, BACKUP, *ceph_args(ceph), *argv], capture_output=True, text=True,
                          timeout=180)


def export(ceph, libvirt_node, guest, target) -> dict:
    done = backup_cmd(ceph, "--json", "export", "--uri", libvirt_node.uri, guest.name, "--to", str(target))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def chain(ceph, libvirt_node, guest, tmp_path_factory):
    """A full and two incremental backups, the guest writing between them; for each the
    SHA-256 of the source image at its snapshot."""
    target = tmp_path_factory.mktemp("backups")
    runs = []
    for step in range(3):
        if step:
            guest.sh(f"head -c {1 << 20} /dev/urandom > /data/step{step}; sync")
        guest.sh(f"head -c {1 << 20} /dev/urandom | dd of=/dev/vdb bs=64k seek={step * 100} conv=fsync")
        run = export(ceph, libvirt_node, guest, target)
        run["source_sha256"] = {image: image_sha256(ceph, image, run["snapshot"])
                                for image in (guest.image, guest.data_image)}
        runs.append(run)
    return target, runs


def test_full_then_incremental_backups_each_restore_to_the_source_at_its_snapshot(ceph, guest, chain):
    _target, runs = chain
    assert [r["kind"] for r in runs] == ["full", "incremental", "incremental"]
    assert all(r["consistency"] == "file systems frozen" for r in runs)
    assert runs[1]["base"] == runs[0]["snapshot"] and runs[2]["base"] == runs[1]["snapshot"]
    # an incremental carries about what changed (1 MiB written), not the whole file system
    assert runs[1]["bytes"] < runs[0]["bytes"] and runs[1]["bytes"] < 8 << 20
    for image in (guest.image, guest.data_image):
        assert len({r["source_sha256"][image] for r in runs}) == 3, "the guest's writes must change it"
    for run in runs:
        verified = backup_cmd(ceph, "verify", run["directory"])
        assert verified.returncode == 0 and "OK" in verified.stdout, verified.stderr
        for image in (guest.image, guest.data_image):
            restored = f"vmpool/restored-{uuid.uuid4().hex[:6]}"
            done = backup_cmd(ceph, "restore", run["directory"], "--image", image, "--to", restored)
            assert done.returncode == 0, done.stderr
            assert image_sha256(ceph, restored) == run["source_sha256"][image], (image, run["snapshot"])


def test_a_backup_of_several_images_needs_image_to_restore(ceph, chain):
    _target, runs = chain
    done = backup_cmd(ceph, "restore", runs[0]["directory"], "--to", "vmpool/which-one")
    assert done.returncode == 2 and "--image" in done.stderr, done


def test_a_restore_onto_an_existing_image_is_refused_unless_forced(ceph, guest, chain):
    _target, runs = chain
    existing = ceph.create_image(f"existing-{uuid.uuid4().hex[:6]}")
    before = image_sha256(ceph, existing)
    first = ["restore", runs[0]["directory"], "--image", guest.image]
    refused = backup_cmd(ceph, *first, "--to", existing)
    assert refused.returncode == 1 and "exists" in refused.stderr, refused
    assert image_sha256(ceph, existing) == before
    forced = backup_cmd(ceph, *first, "--to", existing, "--force")
    assert forced.returncode == 0, forced.stderr
    assert image_sha256(ceph, existing) == runs[0]["source_sha256"][guest.image]
    # never over an image a client has open, --force or not: the running guest's own disk
    in_use = backup_cmd(ceph, *first, "--to", guest.image, "--force")
    assert in_use.returncode == 1 and "open by a client" in in_use.stderr, in_use


@pytest.mark.parametrize("damage", ["truncated", "altered", "partial"])
def test_a_damaged_backup_is_refused_by_verify_and_restore(ceph, guest, chain, tmp_path, damage):
    target, runs = chain
    copy = tmp_path / "copy"
    shutil.copytree(target, copy)
    newest = copy / os.path.relpath(runs[2]["directory"], target)
    base = copy / os.path.relpath(runs[1]["directory"], target)
    stream = next(p for p in base.iterdir() if p.name.endswith(".rbd-diff"))
    if damage == "truncated":
        os.truncate(stream, stream.stat().st_size - 1)
    elif damage == "altered":
        data = bytearray(stream.read_bytes())
        data[len(data) // 2] ^= 0x01
        stream.write_bytes(bytes(data))
    else:
        (base / "manifest.json").unlink()      # what an interrupted export leaves
    expected = {"truncated": "truncated", "altered": "altered", "partial": "partial"}[damage]
    verified = backup_cmd(ceph, "verify", str(newest))   # the damage is in its base: the chain fails
    assert verified.returncode == 1 and expected in verified.stderr, verified
    restored = f"vmpool/never-{uuid.uuid4().hex[:6]}"
    refused = backup_cmd(ceph, "restore", str(newest), "--image", guest.image, "--to", restored)
    assert refused.returncode == 1 and expected in refused.stderr, refused
    listing = subprocess.run(["rbd", *ceph_args(ceph), "ls", "vmpool"], capture_output=True, text=True)
    assert restored.split("/")[1] not in listing.stdout.split()


def test_full_on_request_and_snapshot_retention(ceph, libvirt_node, guest, chain):
    """Last in the module: it prunes the snapshots the chain was taken from."""
    target, runs = chain
    done = backup_cmd(ceph, "--json", "export", "--uri", libvirt_node.uri, guest.name, "--to", str(target),
                      "--full", "--keep-snapshots", "1")
    assert done.returncode == 0, done.stderr
    full = json.loads(done.stdout)
    assert full["kind"] == "full" and full["base"] is None
    assert sorted(full["pruned_snapshots"]) == sorted(r["snapshot"] for r in runs)
    listing = subprocess.run(["rbd", *ceph_args(ceph), "snap", "ls", "--format", "json", guest.image],
                             capture_output=True, text=True, check=True)
    assert [s["name"] for s in json.loads(listing.stdout)] == [full["snapshot"]]
    after = export(ceph, libvirt_node, guest, target)
    assert after["kind"] == "incremental" and after["base"] == full["snapshot"]
