"""One lab node: its files, its namespaces and daemons, and its power switch."""

from __future__ import annotations

import grp
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from . import configs, procs, remote, shaping, sshd
from .errors import LabError
from .layout import BRIDGE, NODE_IFACE, PRIVATE_DIRS, SUBNET, SWITCH_ADDRESS, LabLayout, NodeLayout

PYTHON = "/usr/bin/python3"
HOLDER = str(Path(__file__).with_name("holder.py"))
NODE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    # No syslog daemon on a lab node: Pacemaker logs to its (private) file only.
    "PCMK_logfile": "/var/log/pacemaker/pacemaker.log",
    "PCMK_logfacility": "none",
}
# (name, argv): every daemon in the foreground, so `setsid -f` leaves it a child of the holder.
BASE_DAEMONS = (
    ("virtlogd", ["virtlogd"]),
    ("libvirtd", ["libvirtd", "--listen"]),
    ("sshd", sshd.daemon_argv()),
)
DAEMONS = BASE_DAEMONS + (
    ("corosync", ["corosync", "-f"]),
    ("pacemakerd", ["pacemakerd"]),
)


def daemons_of(node: NodeLayout) -> tuple[tuple[str, list[str]], ...]:
    """What a node runs: a full node its cluster stack, a remote node only pacemaker-remoted."""
    if node.remote:
        return BASE_DAEMONS + (("pacemaker-remoted", remote.daemon_argv()),)
    return DAEMONS


START_TIMEOUT = 30.0
OFF_TIMEOUT = 15.0
# The longest command the lab's remote shell (`ravada-lab ssh`) runs inside a node.
EXEC_TIMEOUT = 300.0


def enter_command(holder: int) -> list[str]:
    """argv prefix that runs a command inside every namespace of the node held by `holder`."""
    return ["nsenter", "-t", str(holder), "-m", "-u", "-i", "-n", "-p", "--"]


def _copy_ownership(target: Path, like: str) -> None:
    st = os.stat(like) if os.path.exists(like) else None
    if st:
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, st.st_mode & 0o7777)


def write_node_files(lab: LabLayout, node: NodeLayout, nodes: list[NodeLayout]) -> None:
    """A node's disk, as installed: private copies of the daemons' directories and configs."""
    for target in PRIVATE_DIRS:
        private = node.private_dir(target)
        private.mkdir(parents=True, exist_ok=True)
        _copy_ownership(private, target)
    node.log_dir.mkdir(parents=True, exist_ok=True)
    hacluster = pwd.getpwnam("hacluster").pw_uid
    haclient = grp.getgrnam("haclient").gr_gid
    pacemaker = node.private_dir("/var/lib/pacemaker")
    for sub in ("cib", "pengine", "blackbox", "cores"):
        (pacemaker / sub).mkdir(mode=0o750, exist_ok=True)
        os.chown(pacemaker / sub, hacluster, haclient)
    cib = pacemaker / "cib" / "cib.xml"
    cib.write_bytes(configs.seed_cib())
    os.chown(cib, hacluster, haclient)
    os.chmod(cib, 0o600)
    os.chown(node.private_dir("/var/log/pacemaker"), hacluster, haclient)
    remote.install_authkey(lab, node)

    corosync = node.private_dir("/etc/corosync")
    (corosync / "corosync.conf").write_text(configs.corosync_conf(lab, nodes))
    shutil.copyfile(lab.authkey, corosync / "authkey")
    os.chmod(corosync / "authkey", 0o400)
    # pcs reads it for every cluster command; an empty one means "no pcsd hosts known".
    known_hosts = node.private_dir("/var/lib/pcsd") / "known-hosts"
    known_hosts.write_text(json.dumps({"format_version": 1, "data_version": 1,
                                       "known_hosts": {}}))
    os.chmod(known_hosts, 0o600)
    libvirt = node.private_dir("/etc/libvirt")
    (libvirt / "libvirtd.conf").write_text(configs.libvirtd_conf(lab, node))
    (libvirt / "qemu.conf").write_text(configs.qemu_conf(node))
    os.chmod(libvirt / "qemu.conf", 0o600)


class Node:
    """A lab node as its controller sees it.  Not thread-safe: the controller serialises."""

    def __init__(self, lab: LabLayout, layout: NodeLayout):
        self.lab = lab
        self.layout = layout
        self.launcher: subprocess.Popen | None = None  # the `unshare` whose child is the holder
        self.holder: int | None = None
        self.namespaces: procs.NamespaceIds | None = None
        self.frozen = False
        self.cut = False
        # The cable's rate limit (bits/s, both ways), kept across power cycles; None: unshaped.
        self.link_rate: int | None = None

    # -- power ---------------------------------------------------------------------------------
    @property
    def powered(self) -> bool:
        return self.holder is not None and procs.alive(self.holder)

    def power_on(self) -> None:
        if self.powered:
            return
        self._reap()
        try:
            self._create_namespaces()
            self._cable()
            if self.link_rate is not None:
                self.shape(self.link_rate)
            self._start_daemons()
        except BaseException:
            self.power_off()
            raise

    def power_off(self) -> None:
        """Power cut: the holder is PID 1 of the node, its death kills every node process."""
        if self.holder is not None:
            # The cable goes dead first: a machine losing power sends nothing more, but dying
            # processes would have their kernel close their TCP connections (FIN, RST), and
            # peers — a remote node's cluster connection above all — would learn of the death
            # at once instead of by their timeouts.
            subprocess.run(["ip", "link", "set", self.layout.switch_port, "down"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            procs.signal_all([self.holder], signal.SIGKILL)
        if self.namespaces is not None:
            # Anything that joined only the node's network namespace dies too.
            procs.signal_all([p for p in procs.members(self.namespaces)
                              if p not in self._machinery()], signal.SIGKILL)
            self._reap()
            left = procs.wait_gone(self.namespaces, OFF_TIMEOUT)
            if left:
                raise LabError(f"{self.layout.name}: processes {left} survived the power cut")
        self._reap()
        self.holder = None
        self.namespaces = None
        self.frozen = False
        self.cut = False

    def _machinery(self) -> frozenset[int]:
        """The launching `unshare`: in the node's netns (it made it) but not part of the node —
        it must stay able to reap the holder, or the holder would become an orphan zombie."""
        return frozenset({self.launcher.pid}) if self.launcher else frozenset()

    def _reap(self) -> None:
        if self.launcher is not None:
            try:
                self.launcher.wait(timeout=OFF_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait()
            self.launcher = None

    def _create_namespaces(self) -> None:
        spec = self.layout.directory / "holder.json"
        binds = [[str(self.layout.private_dir(t)), t] for t in PRIVATE_DIRS]
        binds.append([str(self.lab.hosts_file), "/etc/hosts"])
        spec.write_text(json.dumps({"hostname": self.layout.name, "binds": binds,
                                    "run_dirs": [sshd.PRIVSEP_DIR]}))
        with open(self.layout.log_dir / "holder.log", "ab") as log:
            self.launcher = subprocess.Popen(
                ["unshare", "--net", "--mount", "--uts", "--ipc", "--pid", "--fork",
                 "--mount-proc", "--propagation", "private", "--kill-child", PYTHON, HOLDER,
                 str(spec)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            )
        assert self.launcher.stdout is not None
        ready, _, _ = select.select([self.launcher.stdout], [], [], START_TIMEOUT)
        answer = self.launcher.stdout.readline().decode().strip() if ready else "no answer"
        self.launcher.stdout.close()
        if answer != "ready":
            raise LabError(f"{self.layout.name}: namespace setup {answer} "
                           f"(see {self.layout.log_dir / 'holder.log'})")
        children = psutil.Process(self.launcher.pid).children()
        if len(children) != 1:
            raise LabError(f"{self.layout.name}: cannot find the namespace holder")
        self.holder = children[0].pid
        self.namespaces = procs.NamespaceIds.of(self.holder)

    def _cable(self) -> None:
        """A veth from the node's eth0 to a port of the switch (the controller's own netns)."""
        port = self.layout.switch_port
        subprocess.run(["ip", "link", "del", port], stderr=subprocess.DEVNULL, check=False)
        run(["ip", "link", "add", port, "type", "veth", "peer", "name", NODE_IFACE,
             "address", self.layout.mac, "netns", str(self.holder)])
        run(["ip", "link", "set", port, "master", BRIDGE, "up"])
        inside = ["nsenter", "-t", str(self.holder), "-n", "--", "ip"]
        run(inside + ["addr", "add", f"{self.layout.address}/{SUBNET.prefixlen}",
                      "dev", NODE_IFACE])
        run(inside + ["link", "set", NODE_IFACE, "up"])
        # A gateway, as real hosts have one: broadcasts to 255.255.255.255 (Wake-on-LAN) need a route.
        run(inside + ["route", "add", "default", "via", str(SWITCH_ADDRESS), "dev", NODE_IFACE])

    def _start_daemons(self) -> None:
        assert self.holder is not None
        for name, argv in daemons_of(self.layout):
            if name == "pacemakerd":
                self._wait_for(["corosync-cfgtool", "-s"], "corosync")
            with open(self.layout.log_dir / f"{name}.log", "ab") as log:
                run(enter_command(self.holder) + ["setsid", "-f", *argv], env=NODE_ENV,
                    stdout=log, stderr=log)
        socket = Path(f"/proc/{self.holder}/root/run/libvirt/libvirt-sock")
        deadline = time.monotonic() + START_TIMEOUT
        while not socket.exists():
            if time.monotonic() > deadline:
                raise LabError(f"{self.layout.name}: libvirtd did not come up "
                               f"(see {self.layout.log_dir / 'libvirtd.log'})")
            time.sleep(0.05)

    def _wait_for(self, check: list[str], what: str) -> None:
        assert self.holder is not None
        deadline = time.monotonic() + START_TIMEOUT
        while subprocess.run(enter_command(self.holder) + check, env=NODE_ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            if time.monotonic() > deadline:
                raise LabError(f"{self.layout.name}: {what} did not come up "
                               f"(see {self.layout.log_dir})")
            time.sleep(0.1)

    # -- hung node, network partition --------------------------------------------------------
    def freeze(self) -> None:
        self._require_power()
        assert self.namespaces is not None
        procs.stop_all(self.namespaces, spare=self._machinery())
        self.frozen = True

    def thaw(self) -> None:
        self._require_power()
        assert self.namespaces is not None
        procs.continue_all(self.namespaces)  # the spared launcher does not mind a SIGCONT
        self.frozen = False

    def set_cut(self, cut: bool) -> None:
        self._require_power()
        run(["ip", "link", "set", self.layout.switch_port, "down" if cut else "up"])
        self.cut = cut

    def shape(self, bits: int | None) -> None:
        """Limit the node's cable to `bits`/s each way (None: unlimited); kept across power
        cycles.  Both ends: the node's eth0 (its egress), the switch port (its ingress)."""
        if self.powered:
            assert self.holder is not None
            shaping.apply(["nsenter", "-t", str(self.holder), "-n", "--", "tc"], NODE_IFACE, bits)
            shaping.apply(["tc"], self.layout.switch_port, bits)
        self.link_rate = bits

    def _require_power(self) -> None:
        if not self.powered:
            raise LabError(f"{self.layout.name} is powered off")

    # -- a remote shell ------------------------------------------------------------------------
    def execute(self, argv: object) -> dict:
        """Run argv inside the node (the lab's ssh: nodes cannot enter each other's namespaces)."""
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise LabError("exec needs a non-empty list of strings as argv")
        timeout = EXEC_TIMEOUT
        self._require_power()
        assert self.holder is not None
        try:
            done = subprocess.run(enter_command(self.holder) + argv, env=NODE_ENV, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{self.layout.name}: {' '.join(argv)} did not finish within {timeout:.0f}s") from None
        return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    def daemons(self) -> dict[str, int]:
        """The node's daemons (the holder's children) by command name -> host PID."""
        if not self.powered:
            return {}
        assert self.holder is not None
        found = {}
        for child in psutil.Process(self.holder).children():
            try:
                # psutil's name, not /proc/PID/comm: comm cuts pacemaker-remoted to 15 chars.
                found[child.name()] = child.pid
            except psutil.Error:
                continue  # gone meanwhile
        return found

    def describe(self) -> dict:
        return {
            "power": "on" if self.powered else "off",
            "holder": self.holder,
            "launcher": self.launcher.pid if self.launcher else None,
            "netns": self.namespaces.net if self.namespaces else None,
            "pidns": self.namespaces.pid if self.namespaces else None,
            "daemons": self.daemons(),
            "frozen": self.frozen,
            "cut": self.cut,
            "address": str(self.layout.address),
            "mac": self.layout.mac,
            "kind": "remote" if self.layout.remote else "full",
            "link_rate": self.link_rate,
        }


def run(argv: list[str], **kwargs) -> None:
    """Run a setup command; its stderr becomes the LabError message when it fails."""
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.PIPE)
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, **kwargs)
    if result.returncode:
        detail = result.stderr.decode(errors="replace").strip() if result.stderr else ""
        raise LabError(f"{' '.join(argv)} failed (rc {result.returncode}) {detail}".strip())
