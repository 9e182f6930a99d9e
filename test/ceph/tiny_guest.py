"""A tiny real Linux guest running the real qemu-guest-agent, built at test time from Debian's
packages: linux-image-amd64's vmlinuz and virtio/ext4 modules, busybox-static, and
/usr/sbin/qemu-ga with the shared libraries ldd names (deps/backup.list).

The initramfs's /init mounts the guest's ext4 disk (vda, an RBD image) on /data and starts
qemu-ga on the org.qemu.guest_agent.0 port with an fsfreeze hook that writes
'tinyguest-hook: freeze|thaw' to the serial console, so a test sees in the console log that the
agent really froze and thawed the filesystem.  Kernel command line switches:

    ravada.noagent           qemu-ga is not started (a guest without an agent)
    ravada.freezedelay=N     the freeze hook sleeps N seconds first (a freeze that hangs)

Everything is built once per test session under a tmp directory.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu
import rbd
from lxml import etree

from support.libvirt_node import kvm_usable

_KVM_BOOTS: dict[str, bool] = {}

AGENT_CHANNEL = "org.qemu.guest_agent.0"
QEMU_GA = "/usr/sbin/qemu-ga"
BUSYBOX = "/bin/busybox"
# load order matters: each module after those it needs (modules.dep is checked too)
MODULES = ("virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
           "virtio_blk", "virtio_console", "crc16", "mbcache", "jbd2", "crc32c_generic", "ext4")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /data /tmp /var/run /etc
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /modules/$m.ko; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 /dev/vda /data && echo "tinyguest: /data mounted" > /dev/ttyS0
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = "org.qemu.guest_agent.0" ] && port=/dev/${p##*/}
done
if [ -n "$port" ] && ! grep -q ravada.noagent /proc/cmdline; then
    qemu-ga -m virtio-serial -p $port --fsfreeze-hook=/etc/fsfreeze-hook -t /var/run -v \
        -l /tmp/qemu-ga.log &
    echo "tinyguest: qemu-ga started on $port" > /dev/ttyS0
fi
echo "tinyguest: ready" > /dev/ttyS0
while true; do sleep 3600; done
"""

HOOK = r"""#!/bin/sh
echo "tinyguest-hook: $1" > /dev/ttyS0
delay=$(sed -n 's/.*ravada\.freezedelay=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ "$1" = freeze ] && [ -n "$delay" ]; then sleep "$delay"; fi
exit 0
"""


@dataclass(frozen=True)
class GuestFiles:
    kernel: Path
    initrd: Path
    filesystem: Path          # a raw ext4 image to copy onto the guest's RBD disk


def _kernel_release() -> str:
    releases = sorted(p.name for p in Path("/lib/modules").iterdir() if (p / "modules.dep").exists()
                      and Path(f"/boot/vmlinuz-{p.name}").exists())
    if not releases:
        raise RuntimeError("no Debian kernel with modules (linux-image-amd64, deps/backup.list)")
    return releases[-1]


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return re.findall(r"(/\S+\.so[\S]*) \(0x", out) + re.findall(r"=> (/\S+)", out)


def build(workdir: Path) -> GuestFiles:
    """Build (once) the kernel, initramfs and ext4 file system image under `workdir`."""
    files = GuestFiles(workdir / "vmlinuz", workdir / "initrd.gz", workdir / "data.ext4")
    if all(p.exists() for p in (files.kernel, files.initrd, files.filesystem)):
        return files
    workdir.mkdir(parents=True, exist_ok=True)
    release = _kernel_release()
    moddir = Path("/lib/modules") / release
    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("bin", "etc", "modules", "lib64", "lib/x86_64-linux-gnu", "usr/sbin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    shutil.copy(QEMU_GA, root / "usr/sbin/qemu-ga")
    for lib in set(_libraries(QEMU_GA)):
        target = root / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(lib), target)
    paths = {Path(line.split(":")[0]).name.split(".")[0]: line.split(":")[0]
             for line in (moddir / "modules.dep").read_text().splitlines()}
    order = [m for m in MODULES if m in paths]  # built-in ones are absent from modules.dep
    for name in order:
        source = moddir / paths[name]
        data = source.read_bytes()
        if source.suffix == ".xz" or source.name.endswith(".ko.xz"):
            raise RuntimeError(f"{source}: compressed modules are not supported here")
        (root / "modules" / f"{name}.ko").write_bytes(data)
    (root / "modules.order").write_text("\n".join(order) + "\n")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    (root / "etc/fsfreeze-hook").write_text(HOOK)
    (root / "etc/fsfreeze-hook").chmod(0o755)
    cpio = subprocess.run("find . | cpio -o -H newc --quiet", shell=True, cwd=root, check=True,
                          capture_output=True).stdout
    files.initrd.write_bytes(gzip.compress(cpio, compresslevel=1))
    shutil.copy(f"/boot/vmlinuz-{release}", files.kernel)
    raw = workdir / "data.ext4.tmp"
    with open(raw, "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "tinydata", str(raw)], check=True)
    raw.rename(files.filesystem)
    shutil.rmtree(root)
    return files


def kvm_boots(files: GuestFiles) -> bool:
    """Whether KVM really boots this kernel: /dev/kvm can open yet fail to run a Linux guest
    (nested virtualisation); TCG is used then.  Probed once (10 s at most)."""
    if "kvm" not in _KVM_BOOTS:
        _KVM_BOOTS["kvm"] = kvm_usable() and _boots_with_kvm(files)
    return _KVM_BOOTS["kvm"]


def _boots_with_kvm(files: GuestFiles) -> bool:
    log = files.kernel.parent / "kvm-probe.log"
    log.unlink(missing_ok=True)
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "128",
                             "-kernel", str(files.kernel), "-append", "console=ttyS0 panic=-1",
                             "-display", "none", "-serial", f"file:{log}", "-no-reboot"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if log.exists() and b"Linux version" in log.read_bytes():
                return True
            time.sleep(0.1)
        return False
    finally:
        proc.kill()
        proc.wait()


def domain_xml(name: str, files: GuestFiles, disks_xml: list[str], console: Path,
               cmdline_extra: str = "", agent_channel: bool = True) -> str:
    """A guest booting `files` directly, its disks (RBD <disk> XML), the serial console to a file
    and (by default) the guest agent's virtio-serial channel."""
    root = etree.Element("domain", type="kvm" if kvm_boots(files) else "qemu")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "uuid").text = str(uuid.uuid4())
    etree.SubElement(root, "memory", unit="MiB").text = "256"
    etree.SubElement(root, "vcpu").text = "1"
    os_el = etree.SubElement(root, "os")
    etree.SubElement(os_el, "type", arch=platform.machine()).text = "hvm"
    etree.SubElement(os_el, "kernel").text = str(files.kernel)
    etree.SubElement(os_el, "initrd").text = str(files.initrd)
    etree.SubElement(os_el, "cmdline").text = f"console=ttyS0 panic=-1 quiet {cmdline_extra}".strip()
    etree.SubElement(root, "on_poweroff").text = "destroy"
    etree.SubElement(root, "on_reboot").text = "destroy"
    devices = etree.SubElement(root, "devices")
    for disk in disks_xml:
        devices.append(etree.fromstring(disk))
    serial = etree.SubElement(devices, "serial", type="file")
    etree.SubElement(serial, "source", path=str(console))
    etree.SubElement(serial, "target", port="0")
    if agent_channel:
        channel = etree.SubElement(devices, "channel", type="unix")
        etree.SubElement(channel, "source", mode="bind")
        etree.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
    etree.SubElement(devices, "memballoon", model="none")
    return etree.tostring(root, pretty_print=True).decode()


def rbd_disk(ceph, spec: str, secret_uuid: str, user: str, dev: str = "vda") -> str:
    """<disk> XML of RBD image `spec` as the guest's `dev` (QEMU's librbd, cephx `user`)."""
    disk = etree.Element("disk", type="network", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type="raw", cache="none")
    source = etree.SubElement(disk, "source", protocol="rbd", name=spec)
    etree.SubElement(source, "host", name=ceph.mon_ip, port="6789")
    etree.SubElement(source, "config", file=str(ceph.conf))
    auth = etree.SubElement(disk, "auth", username=user)
    etree.SubElement(auth, "secret", type="ceph", uuid=secret_uuid)
    etree.SubElement(disk, "target", dev=dev, bus="virtio")
    return etree.tostring(disk).decode()


def copy_to_image(ceph, spec: str, source: Path, chunk: int = 1 << 20) -> None:
    """Write the file system image into RBD image `spec` (zero chunks skipped: sparse)."""
    pool, _, name = spec.partition("/")
    cluster = ceph.client("admin")
    try:
        with cluster.open_ioctx(pool) as io, rbd.Image(io, name) as image, open(source, "rb") as handle:
            offset = 0
            while data := handle.read(chunk):
                if data.strip(b"\0"):
                    image.write(data, offset)
                offset += len(data)
            image.flush()
    finally:
        cluster.shutdown()


def image_sha256(ceph, spec: str, snapshot: str | None = None, chunk: int = 4 << 20) -> str:
    """SHA-256 of an image's whole content (at `snapshot` if given)."""
    pool, _, name = spec.partition("/")
    cluster = ceph.client("admin")
    digest = hashlib.sha256()
    try:
        with cluster.open_ioctx(pool) as io, \
                rbd.Image(io, name, snapshot=snapshot, read_only=True) as image:
            size = image.size()
            for offset in range(0, size, chunk):
                digest.update(image.read(offset, min(chunk, size - offset)))
    finally:
        cluster.shutdown()
    return digest.hexdigest()


class Guest:
    """A running tiny guest on a LibvirtNode, its disk an RBD image."""

    def __init__(self, node, ceph, files: GuestFiles, workdir: Path, name: str, image: str,
                 secret_uuid: str, user: str, cmdline_extra: str = "",
                 extra_images: tuple[str, ...] = ()) -> None:
        """`image` gets the file system (vda); `extra_images` are further disks (vdb, ...)."""
        self.node, self.name, self.image = node, name, image
        self.console = workdir / f"{name}.console"
        copy_to_image(ceph, image, files.filesystem)
        self.conn = node.connect()
        disks = [rbd_disk(ceph, spec, secret_uuid, user, dev=f"vd{chr(ord('a') + i)}")
                 for i, spec in enumerate((image, *extra_images))]
        xml = domain_xml(name, files, disks, self.console, cmdline_extra)
        self.domain = self.conn.createXML(xml, 0)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_ready(self, agent: bool = True, timeout: float = 180) -> None:
        """Until the guest's init says ready (and its agent answers a ping)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "tinyguest: ready" in self.console_text() and (not agent or self.agent_ping()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"guest {self.name} not ready in {timeout:.0f}s; console:\n"
                           + self.console_text()[-2000:])

    def agent(self, command: str, arguments: dict | None = None, timeout: int = 10) -> object:
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        return json.loads(libvirt_qemu.qemuAgentCommand(self.domain, json.dumps(request), timeout, 0))["return"]

    def agent_ping(self) -> bool:
        try:
            self.agent("guest-ping", timeout=2)
            return True
        except libvirt.libvirtError:
            return False

    def fsfreeze_status(self) -> str:
        return self.agent("guest-fsfreeze-status")

    def sh(self, script: str, timeout: float = 60) -> str:
        """Run `script` with the guest's /bin/sh through the agent (guest-exec); its output."""
        pid = self.agent("guest-exec", {"path": "/bin/sh", "arg": ["-c", script],
                                         "capture-output": True})["pid"]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status = self.agent("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                if status.get("exitcode") != 0:
                    err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
                    raise RuntimeError(f"guest command failed ({status.get('exitcode')}): {err}{out}")
                return out
            time.sleep(0.2)
        raise TimeoutError(f"guest command did not finish in {timeout}s: {script}")

    def destroy(self) -> None:
        try:
            self.domain.destroy()
        except libvirt.libvirtError:
            pass
        self.conn.close()
