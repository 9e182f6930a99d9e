"""Which files VMs still need: a base one of them uses is never deleted or replaced.

Two witnesses, both required, because either alone misses cases:
  - libvirt: every defined or running domain's disks (live and persistent XML), with the
    backing chains libvirt reports and the ones qemu-img finds under each disk;
  - the directory: every qcow2 file in it (an overlay Ravada created but has not defined
    yet, a clone of a stopped VM) and its backing chain, from `qemu-img info --backing-chain`.
When either cannot be asked, the answer is "unknown" (InUseUnknown): callers then keep the
file. Every outside call is bounded.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess

from .. import safexml
from ..deadline import Deadline

QCOW2_MAGIC = b"QFI\xfb"
QEMU_IMG_LIMIT = 10.0
MAX_OUTPUT = 4 * 1024 * 1024


class InUseUnknown(Exception):
    """What uses the bases could not be found out; nothing may be deleted."""


def is_qcow2(path: str) -> bool:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 4) == QCOW2_MAGIC
    finally:
        os.close(fd)


def backing_files(image: str, deadline: Deadline) -> set[str]:
    """The files under `image` (its backing chain, without itself), as absolute paths."""
    timeout = deadline.bounded(QEMU_IMG_LIMIT)
    if timeout <= 0:
        raise InUseUnknown(f"no time left to read the backing chain of {image}")
    try:
        done = subprocess.run(["qemu-img", "info", "--backing-chain", "--output=json", "-U", image],
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise InUseUnknown("qemu-img is not installed (qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise InUseUnknown(f"qemu-img info {image} did not answer within {timeout:.0f}s") from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.decode("utf-8", "replace").split())[:200]
        raise InUseUnknown(f"qemu-img info {image} failed: {detail}")
    return parse_backing_chain(done.stdout, image)


def parse_backing_chain(output: bytes, image: str) -> set[str]:
    """Backing files named in qemu-img's JSON for `image` (untrusted: bounded, typed)."""
    if len(output) > MAX_OUTPUT:
        raise InUseUnknown(f"qemu-img info {image}: output too large")
    try:
        chain = json.loads(output.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        raise InUseUnknown(f"qemu-img info {image}: output is not JSON") from None
    if isinstance(chain, dict):
        chain = [chain]
    if not isinstance(chain, list):
        raise InUseUnknown(f"qemu-img info {image}: unexpected output")
    found: set[str] = set()
    for entry in chain:
        if not isinstance(entry, dict):
            raise InUseUnknown(f"qemu-img info {image}: unexpected output")
        backing = entry.get("full-backing-filename") or entry.get("backing-filename")
        if not isinstance(backing, str) or not backing:
            continue
        directory = os.path.dirname(entry.get("filename") if isinstance(entry.get("filename"), str) else image)
        found.add(os.path.normpath(os.path.join(directory, backing)))
    return found


def overlay_users(directory: str, skip: set[str], deadline: Deadline) -> set[str]:
    """Files used as backing by the qcow2 files of `directory` (other than those in `skip`,
    the bases themselves, whose own chains the manifest describes)."""
    used: set[str] = set()
    try:
        names = os.listdir(directory)
    except OSError as err:
        raise InUseUnknown(f"cannot list {directory}: {err.strerror}") from None
    for name in sorted(names):
        path = os.path.join(directory, name)
        if name.startswith(".") or path in skip or not is_qcow2(path):
            continue
        used |= backing_files(path, deadline)
    return used


def domain_disks(domain_xml: str) -> set[str]:
    """Disk files of one domain definition, with the backing files libvirt lists."""
    try:
        root = safexml.parse(domain_xml, "domain XML")
    except safexml.UnsafeXml as err:
        raise InUseUnknown(str(err)) from None
    files = set()
    for source in root.iterfind("devices/disk//source"):
        path = source.get("file")
        if path:
            files.add(os.path.normpath(path))
    return files


def libvirt_users(uri: str | None, deadline: Deadline) -> set[str]:
    """Every file a defined or running domain uses, its backing chain included."""
    try:
        import libvirt

        from ..virt.connection import Hypervisor, VirtError
    except ImportError as err:
        raise InUseUnknown(f"python3-libvirt is not installed: {err}") from None
    try:
        hv = Hypervisor.connect(uri, deadline)
    except VirtError as err:
        raise InUseUnknown(f"libvirt not asked: {err.reason}") from None
    try:
        disks: set[str] = set()
        for dom in hv.call("listing domains", hv.conn.listAllDomains, 0):
            for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
                try:
                    disks |= domain_disks(hv.call("reading a domain's XML", dom.XMLDesc, flags))
                except VirtError:
                    continue   # undefined between listing and asking
    except VirtError as err:
        raise InUseUnknown(f"libvirt not asked: {err.reason}") from None
    finally:
        hv.close()
    used = set(disks)
    for disk in sorted(disks):
        if is_qcow2(disk):
            used |= backing_files(disk, deadline)
    return used


def files_in_use(directory: str, bases: set[str], uri: str | None, deadline: Deadline) -> set[str]:
    """Absolute paths VMs use (directly or as backing). InUseUnknown when it cannot be known."""
    return libvirt_users(uri, deadline) | overlay_users(directory, bases, deadline)
