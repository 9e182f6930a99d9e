"""A private libvirtd + virtlogd for tests: a "node" in its own mount/UTS (and optionally
network) namespace, with its own /run, /etc/libvirt, /var/lib/libvirt and host UUID.

Nothing outside the node sees it except through /proc/<holder>/root, so several test runs,
the lab and a host libvirtd never collide. Every process is started here and stopped by
its recorded PID; the namespaces vanish with their last process, taking mounts and veth
links with them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from typing import Mapping

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3"
# The agents under test: the tree's, or installed ones (CI points this at the Debian package's
# /usr/lib/ocf/resource.d/ravada to test the installed files).
AGENT_DIR = os.environ.get("RAVADA_TEST_AGENTS") or os.path.join(REPO, "agents")
AGENT = os.path.join(AGENT_DIR, "VirtualDomain")

QEMU_CONF = """
# test node: run QEMU as root so /dev/kvm (0600 root) works; no host integration
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
"""


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def domain_xml(name: str, memory_mib: int = 64, vcpus: int = 1, extra_devices: str = "",
               domain_uuid: str | None = None) -> str:
    """A tiny disk-less guest: boots nothing, ignores ACPI (no OS), starts in < 1 s."""
    from lxml import etree

    virt = "kvm" if kvm_usable() else "qemu"
    root = etree.Element("domain", type=virt)
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "uuid").text = domain_uuid or str(uuid.uuid4())
    etree.SubElement(root, "memory", unit="MiB").text = str(memory_mib)
    etree.SubElement(root, "vcpu").text = str(vcpus)
    os_el = etree.SubElement(root, "os")
    etree.SubElement(os_el, "type", arch="x86_64").text = "hvm"
    etree.SubElement(root, "on_poweroff").text = "destroy"
    devices = etree.SubElement(root, "devices")
    etree.SubElement(devices, "serial", type="pty")
    etree.SubElement(devices, "memballoon", model="none")
    if extra_devices:
        for element in etree.fromstring(f"<x>{extra_devices}</x>"):
            devices.append(element)
    return etree.tostring(root, pretty_print=True).decode()


# A boot sector that rewrites 512 KiB of guest RAM (0x10000-0x8FFFF) forever with non-zero
# words: a guest whose dirty rate keeps a slow live migration from ever converging.
#   cli; L0: mov ax,0x1000; L1: mov es,ax; xor di,di; mov cx,0x8000; rep stosw
#   add ax,0x1000; cmp ax,0x9000; jb L1; jmp L0
MEMORY_DIRTIER = bytes.fromhex("fa b8 00 10 8e c0 31 ff b9 00 80 f3 ab 05 00 10 3d 00 90 72 ef eb ea")


def write_memory_dirtier(path: str) -> str:
    with open(path, "wb") as disk:
        disk.write(MEMORY_DIRTIER.ljust(510, b"\0") + b"\x55\xaa")
        disk.truncate(1024 * 1024)  # firmware ignores disks smaller than a few sectors
    return path


def dirtier_disk_xml(path: str) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{path}'/><target dev='hda' bus='ide'/></disk>")


class LibvirtNode:
    def __init__(self, workdir: str, name: str, network: bool = False, listen_tcp: bool = False) -> None:
        self.name = name
        self.dir = os.path.join(workdir, name)
        self.network = network
        self.listen_tcp = listen_tcp
        self.holder: subprocess.Popen | None = None
        self.daemons: dict[str, subprocess.Popen] = {}

    # -- lifecycle -----------------------------------------------------------------

    def start(self, hosts: Mapping[str, str] | None = None) -> "LibvirtNode":
        for sub in ("etc", "lib", "log", "cache"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        etc = os.path.join(self.dir, "etc")
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True)
        with open(os.path.join(etc, "qemu.conf"), "a") as conf:
            conf.write(QEMU_CONF)
        with open(os.path.join(etc, "libvirtd.conf"), "a") as conf:
            conf.write(f'\nhost_uuid = "{uuid.uuid4()}"\n')
            if self.listen_tcp:
                # Test-only: unauthenticated TCP, reachable only inside our private network.
                conf.write('listen_tls = 0\nlisten_tcp = 1\nauth_tcp = "none"\n')
        with open(os.path.join(self.dir, "hosts"), "w") as handle:
            handle.write(f"127.0.0.1 localhost {self.name}\n")
            for host, address in (hosts or {}).items():
                handle.write(f"{address} {host}\n")
        flags = ["--mount", "--uts", "--propagation", "private"] + (["--net"] if self.network else [])
        self.holder = subprocess.Popen(["unshare", *flags, "--", "sleep", "infinity"])
        self._wait_namespace()
        self.run_in(["sh", "-ec", " && ".join([
            "mount -t tmpfs -o mode=0755 tmpfs /run",
            "mount -t tmpfs tmpfs /dev/shm",
            f"mount --bind {etc} /etc/libvirt",
            f"mount --bind {self.dir}/lib /var/lib/libvirt",
            "mkdir -p /var/log/libvirt /var/cache/libvirt",
            f"mount --bind {self.dir}/log /var/log/libvirt",
            f"mount --bind {self.dir}/cache /var/cache/libvirt",
            f"mount --bind {self.dir}/hosts /etc/hosts",
            f"hostname {self.name}",
        ])], check=True)
        if self.network:
            self.run_in(["ip", "link", "set", "lo", "up"], check=True)
        self._daemon("virtlogd", ["virtlogd"])
        self._daemon("libvirtd", ["libvirtd"] + (["--listen"] if self.listen_tcp else []))
        self._wait_socket()
        return self

    def stop(self) -> None:
        """Destroy our guests, then stop daemons and the holder by their PIDs."""
        if self.holder is None:
            return
        if "libvirtd" in self.daemons and self.daemons["libvirtd"].poll() is None:
            self._destroy_all_domains()
        for qemu_pid in self.qemu_pids():
            _terminate(qemu_pid)
        for name in ("libvirtd", "virtlogd"):
            proc = self.daemons.pop(name, None)
            if proc is not None:
                _stop_popen(proc)
        _stop_popen(self.holder)
        self.holder = None

    # -- inside the node -----------------------------------------------------------

    def nsenter(self) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-u"] + (["-n"] if self.network else [])

    def run_in(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.nsenter() + argv, **kwargs)

    @property
    def socket(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/root/run/libvirt/libvirt-sock"

    @property
    def uri(self) -> str:
        """URI usable from outside the node (tests' own libvirt connections)."""
        return f"qemu:///system?socket={self.socket}"

    def connect(self):
        import libvirt

        return libvirt.open(self.uri)

    def agent(self, action: str, params: Mapping[str, str], meta: Mapping[str, str] | None = None,
              env: Mapping[str, str] | None = None, timeout: float = 120, agent: str = AGENT,
              ) -> subprocess.CompletedProcess:
        """Run an OCF agent inside the node the way pacemaker-execd does."""
        environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OCF_ROOT": "/usr/lib/ocf",
                   "OCF_RESOURCE_INSTANCE": "vm", "HA_RSCTMP": "/run/resource-agents"}
        environ.update({f"OCF_RESKEY_{k}": v for k, v in params.items()})
        environ.update({f"OCF_RESKEY_CRM_meta_{k}": v for k, v in (meta or {}).items()})
        environ.update(env or {})
        return subprocess.run(self.nsenter() + [PYTHON, agent, action], env=environ,
                              capture_output=True, text=True, timeout=timeout)

    def qemu_pid(self, name: str) -> int:
        """The QEMU process of domain `name` (libvirt's pid file in the node's /run)."""
        with open(f"/proc/{self.holder.pid}/root/run/libvirt/qemu/{name}.pid") as handle:
            return int(handle.read().strip())

    def domain_log(self, name: str) -> str:
        """QEMU's log of domain `name` (its stdout/stderr, kept by virtlogd)."""
        with open(f"/proc/{self.holder.pid}/root/var/log/libvirt/qemu/{name}.log", errors="replace") as handle:
            return handle.read()

    def qemu_pids(self) -> list[int]:
        """QEMU processes of this node, from libvirt's pid files in the node's /run."""
        if self.holder is None:
            return []
        directory = f"/proc/{self.holder.pid}/root/run/libvirt/qemu"
        pids = []
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        for entry in names:
            if entry.endswith(".pid"):
                try:
                    with open(os.path.join(directory, entry)) as handle:
                        pid = int(handle.read().strip())
                except (OSError, ValueError):
                    continue
                try:
                    with open(f"/proc/{pid}/comm") as handle:
                        is_qemu = handle.read().startswith("qemu")
                except OSError:
                    continue
                if is_qemu:  # the directory also holds the driver's own lock pid file
                    pids.append(pid)
        return pids

    def stop_libvirtd(self) -> None:
        """Stop only libvirtd (tests of a dead daemon); QEMU keeps running."""
        proc = self.daemons.pop("libvirtd")
        _stop_popen(proc)

    def freeze_libvirtd(self) -> None:
        os.kill(self.daemons["libvirtd"].pid, signal.SIGSTOP)

    def thaw_libvirtd(self) -> None:
        os.kill(self.daemons["libvirtd"].pid, signal.SIGCONT)

    def restart_libvirtd(self) -> None:
        self._daemon("libvirtd", ["libvirtd"] + (["--listen"] if self.listen_tcp else []))
        self._wait_socket()

    # -- internals -----------------------------------------------------------------

    def _daemon(self, name: str, argv: list[str]) -> None:
        log = open(os.path.join(self.dir, "log", f"{name}.out"), "ab")
        # nsenter execs the daemon (no fork without a PID namespace): Popen.pid is its PID.
        self.daemons[name] = subprocess.Popen(self.nsenter() + argv, stdout=log, stderr=log,
                                              stdin=subprocess.DEVNULL)
        log.close()

    def _wait_namespace(self) -> None:
        assert self.holder is not None
        mine = os.stat("/proc/self/ns/mnt").st_ino
        for _ in range(100):
            if os.stat(f"/proc/{self.holder.pid}/ns/mnt").st_ino != mine:
                return
            time.sleep(0.02)
        raise RuntimeError("unshare did not create the namespaces")

    def _wait_socket(self) -> None:
        for _ in range(300):
            if os.path.exists(self.socket):
                try:
                    self.connect().close()
                    return
                except Exception:
                    pass
            if self.daemons["libvirtd"].poll() is not None:
                break
            time.sleep(0.05)
        with open(os.path.join(self.dir, "log", "libvirtd.out"), errors="replace") as handle:
            tail = handle.read()[-2000:]
        raise RuntimeError(f"libvirtd of {self.name} did not come up:\n{tail}")

    def _destroy_all_domains(self) -> None:
        try:
            conn = self.connect()
        except Exception:
            return
        try:
            for dom in conn.listAllDomains():
                try:
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefine()
                except Exception:
                    pass
        finally:
            conn.close()


def _terminate(pid: int, grace: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace
    while time.monotonic() < end and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_popen(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGCONT)  # a frozen daemon cannot act on SIGTERM
        except ProcessLookupError:
            pass
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def connect_pair(a: LibvirtNode, b: LibvirtNode, address_a: str, address_b: str, prefix: int = 24) -> None:
    """A veth cable between two networked nodes; it dies with their namespaces."""
    assert a.holder is not None and b.holder is not None
    link = f"rvt{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", f"{link}a", "netns", str(a.holder.pid), "type", "veth",
                    "peer", "name", f"{link}b", "netns", str(b.holder.pid)], check=True)
    for node, dev, address in ((a, f"{link}a", address_a), (b, f"{link}b", address_b)):
        node.run_in(["ip", "addr", "add", f"{address}/{prefix}", "dev", dev], check=True)
        node.run_in(["ip", "link", "set", dev, "up"], check=True)
