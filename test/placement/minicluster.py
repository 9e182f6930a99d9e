"""A small real Pacemaker cluster for tests: N corosync+pacemakerd nodes, each in its own
mount, UTS and network namespace, joined by veth links that exist only inside those namespaces.

Every node gets private /run, /dev/shm, /etc/corosync, /var/lib/{pacemaker,corosync} and
/var/log/{pacemaker,corosync} (bind mounts of a temp directory), so nothing collides with
another cluster on the machine; libqb IPC uses abstract sockets, which the private network
namespace also isolates.  Processes are stopped by the PIDs recorded at start; when the last
process of a namespace exits, its mounts and links disappear with it.
"""
from __future__ import annotations

import os
import pwd
import grp
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from lxml import etree

# Runs as the first process of each namespace: private mounts, then waits for the veth link
# to be configured from outside, then starts the cluster stack and waits for it.
NODE_INIT = r"""
set -eu
root=$1; name=$2; addr=$3
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
for d in etc/corosync var/lib/pacemaker var/lib/corosync var/log/pacemaker var/log/corosync; do
    mount --bind "$root/$d" "/$d"
done
hostname "$name"
ip link set lo up
touch "$root/ns-ready"
while [ ! -e "$root/go" ]; do sleep 0.05; done
ip addr add "$addr/24" dev ring0
ip link set ring0 up
corosync -f >"$root/corosync.out" 2>&1 &
echo $! >"$root/corosync.pid"
i=0
until corosync-cmapctl totem.cluster_name >/dev/null 2>&1; do
    i=$((i+1)); [ $i -lt 200 ] || exit 1; sleep 0.05
done
pacemakerd >"$root/pacemakerd.out" 2>&1 &
echo $! >"$root/pacemakerd.pid"
wait
"""

COROSYNC_CONF = """totem {{
    version: 2
    cluster_name: {cluster}
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: 1000
}}
logging {{
    to_logfile: yes
    logfile: /var/log/corosync/corosync.log
    to_syslog: no
    to_stderr: no
}}
quorum {{
    provider: corosync_votequorum
{quorum_extra}}}
nodelist {{
{nodes}}}
"""


INITIAL_CIB = """<cib validate-with="pacemaker-3.0" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="opt-stonith-enabled" name="stonith-enabled" value="false"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""


class MiniCluster:
    def __init__(self, node_count: int = 2, cluster_name: str = "placetest") -> None:
        self.names = [f"pnode{i + 1}" for i in range(node_count)]
        self.addrs = [f"10.231.7.{i + 1}" for i in range(node_count)]
        self.cluster_name = cluster_name
        self.workdir = Path(tempfile.mkdtemp(prefix="ravada-place-pcmk-"))
        self.holders: list[subprocess.Popen] = []
        self.namespaces: list[str] = []     # net namespace ids of the holders

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        script = self.workdir / "node-init.sh"
        script.write_text(NODE_INIT)
        for name, addr in zip(self.names, self.addrs):
            root = self._root(name)
            self._prepare_root(root)
            holder = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--net", "--", "/bin/sh", str(script), str(root), name, addr],
                stdout=open(root / "init.out", "w"), stderr=subprocess.STDOUT)
            self.holders.append(holder)
            self.namespaces.append(self._wait_namespace(holder))
        for name in self.names:
            self._wait_for(lambda n=name: (self._root(n) / "ns-ready").exists(), 10, "namespace setup")
        self._link_namespaces()
        for name in self.names:
            (self._root(name) / "go").touch()
        self._wait_for(self._all_online, timeout, "all nodes online with a DC")

    def _prepare_root(self, root: Path) -> None:
        hacluster = pwd.getpwnam("hacluster").pw_uid
        haclient = grp.getgrnam("haclient").gr_gid
        for d in ("etc/corosync", "var/lib/corosync", "var/log/corosync"):
            (root / d).mkdir(parents=True)
        for d in ("var/lib/pacemaker/cib", "var/lib/pacemaker/pengine", "var/lib/pacemaker/blackbox",
                  "var/lib/pacemaker/cores", "var/log/pacemaker"):
            (root / d).mkdir(parents=True)
            os.chown(root / d, hacluster, haclient)
        nodes = "".join(f"    node {{\n        ring0_addr: {a}\n        name: {n}\n        nodeid: {i + 1}\n    }}\n"
                        for i, (n, a) in enumerate(zip(self.names, self.addrs)))
        # A first CIB with a short dc-deadtime: the default 20 s wait for a DC dominates start-up.
        cib_file = root / "var/lib/pacemaker/cib/cib.xml"
        cib_file.write_text(INITIAL_CIB)
        os.chown(cib_file, hacluster, haclient)
        cib_file.chmod(0o600)
        quorum_extra = "    two_node: 1\n" if len(self.names) == 2 else ""
        (root / "etc/corosync/corosync.conf").write_text(
            COROSYNC_CONF.format(cluster=self.cluster_name, nodes=nodes, quorum_extra=quorum_extra))

    def _link_namespaces(self) -> None:
        """A veth pair (2 nodes) or a bridge-less star is not needed beyond 2 nodes here."""
        if len(self.holders) == 1:
            subprocess.run(["nsenter", "--net", f"--target={self.holders[0].pid}",
                            "ip", "link", "add", "ring0", "type", "dummy"], check=True)
            return
        if len(self.holders) != 2:
            raise ValueError("MiniCluster links at most 2 nodes")
        first, second = self.holders
        # Created inside the first namespace, the peer moved straight into the second: the
        # host namespace never holds either end.
        subprocess.run(["nsenter", "--net", f"--target={first.pid}", "ip", "link", "add", "ring0",
                        "type", "veth", "peer", "name", "ring0", "netns", f"/proc/{second.pid}/ns/net"],
                       check=True)

    def _all_online(self) -> bool:
        proc = self.run(["crm_mon", "--output-as=xml", "-1"], check=False)
        if proc.returncode != 0:
            return False
        status = etree.fromstring(proc.stdout.encode())
        online = {n.get("name") for n in status.iterfind("nodes/node") if n.get("online") == "true"}
        has_dc = status.find("summary/current_dc[@present='true']") is not None
        return has_dc and online == set(self.names)

    def stop(self) -> None:
        for name in self.names:
            self._signal_pidfile(self._root(name) / "pacemakerd.pid", signal.SIGTERM)
        for name in self.names:
            self._wait_pidfile_gone(self._root(name) / "pacemakerd.pid", 20)
        for name in self.names:
            self._signal_pidfile(self._root(name) / "corosync.pid", signal.SIGTERM)
        for name in self.names:
            self._wait_pidfile_gone(self._root(name) / "corosync.pid", 10)
        # Whatever a slow shutdown left behind lives in our namespaces: only we started it.
        for pid in self._processes_in_our_namespaces():
            if pid not in {holder.pid for holder in self.holders}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for holder in self.holders:
            try:
                holder.wait(15)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
        self.holders.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- use -------------------------------------------------------------------------------
    def run(self, argv: list[str], node: int = 0, check: bool = True, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command inside a node's namespaces (where the cluster's IPC is visible)."""
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run(["nsenter", "--mount", "--uts", "--net", f"--target={self.holders[node].pid}",
                               "--", *argv], capture_output=True, text=True, check=check, input=input,
                              env=full_env, timeout=120)

    def resource_nodes(self) -> dict[str, str | None]:
        status = etree.fromstring(self.run(["crm_mon", "--output-as=xml", "-1"]).stdout.encode())
        where: dict[str, str | None] = {}
        for rsc in status.iterfind("resources/resource"):
            node = rsc.find("node")
            where[rsc.get("id")] = node.get("name") if node is not None and rsc.get("active") == "true" else None
        return where

    def settle(self, timeout: float = 30) -> None:
        """Wait until the cluster has no pending actions."""
        self._wait_for(lambda: self.run(["crm_resource", "--wait", "--timeout=5s"], check=False).returncode == 0,
                       timeout, "cluster to settle")

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _wait_namespace(holder: subprocess.Popen) -> str:
        """The holder's own net namespace id, once unshare has entered it."""
        host = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                namespace = os.readlink(f"/proc/{holder.pid}/ns/net")
            except FileNotFoundError:
                raise RuntimeError("unshare exited before creating its namespaces") from None
            if namespace != host:
                return namespace
            time.sleep(0.01)
        raise TimeoutError("unshare did not enter a new network namespace")

    def _processes_in_our_namespaces(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") in self.namespaces:
                        found.append(int(entry))
                except OSError:
                    pass
        return found

    def _root(self, name: str) -> Path:
        return self.workdir / name

    @staticmethod
    def _signal_pidfile(pidfile: Path, sig: int) -> None:
        try:
            os.kill(int(pidfile.read_text()), sig)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass

    @staticmethod
    def _wait_pidfile_gone(pidfile: Path, timeout: float) -> None:
        try:
            pid = int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for holder in self.holders:
                if holder.poll() is not None:
                    raise RuntimeError(f"a cluster node exited early while waiting for {what}; see {self.workdir}")
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}; see {self.workdir}")
