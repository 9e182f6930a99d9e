"""pacemaker_remote nodes in the lab: remote1..N, past corosync's node limit.

A remote node runs pacemaker-remoted (and libvirtd, virtlogd, sshd), no corosync and no
pacemakerd.  The cluster's full nodes reach it over TLS (port 3121) with the authkey every
node holds at /etc/pacemaker/authkey, through one `ocf:pacemaker:remote` connection resource
per remote node, named like the node; the lab's fence device fences it like any node.
"""

from __future__ import annotations

import grp
import os
import shutil
from pathlib import Path

from lxml import etree

from .errors import LabError
from .layout import LabLayout, NodeLayout

# Debian's pacemaker-remote conflicts with pacemaker (the full nodes need it): tools/install-deps
# unpacks it here without installing it (deps/remote.unpack).
UNPACKED_REMOTED = Path("/usr/local/lib/ocf-ravada/unpacked/pacemaker-remote/usr/sbin/"
                        "pacemaker-remoted")
AUTHKEY = "/etc/pacemaker/authkey"
AUTHKEY_BYTES = 4096
# How the cluster watches a connection: a lost remote node is noticed within about
# MONITOR_INTERVAL + MONITOR_TIMEOUT (a full node's loss takes corosync's token, ~3.5 s).
MONITOR_INTERVAL = "2s"
MONITOR_TIMEOUT = "5s"
# After a fenced remote node has rebooted, the cluster tries the connection again this often.
RECONNECT_INTERVAL = "5s"
START_TIMEOUT = "60s"


def remoted_path() -> str:
    """pacemaker-remoted: on PATH when installed, else where tools/install-deps unpacked it."""
    found = shutil.which("pacemaker-remoted", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found:
        return found
    if os.access(UNPACKED_REMOTED, os.X_OK):
        return str(UNPACKED_REMOTED)
    raise LabError(f"pacemaker-remoted not found (neither installed nor at {UNPACKED_REMOTED}; "
                   "run tools/install-deps)")


def daemon_argv() -> list[str]:
    return [remoted_path()]


def make_authkey(lab: LabLayout) -> None:
    """The lab's Pacemaker authkey: random bytes, as `dd if=/dev/urandom` makes it."""
    lab.pacemaker_authkey.write_bytes(os.urandom(AUTHKEY_BYTES))
    os.chmod(lab.pacemaker_authkey, 0o600)


def install_authkey(lab: LabLayout, node: NodeLayout) -> None:
    """The node's view of the shared key: root:haclient 0640, as the packages expect it."""
    target = node.private_dir("/etc/pacemaker") / Path(AUTHKEY).name
    shutil.copyfile(lab.pacemaker_authkey, target)
    os.chown(target, 0, grp.getgrnam("haclient").gr_gid)
    os.chmod(target, 0o640)


def connection_resources(nodes: list[NodeLayout]) -> bytes:
    """`<resources>` holding one ocf:pacemaker:remote primitive per remote node, for
    `cibadmin --create --scope resources` (what `pcs cluster node add-remote` creates)."""
    resources = etree.Element("resources")
    for node in nodes:
        primitive = etree.SubElement(resources, "primitive", id=node.name, provider="pacemaker",
                                     type="remote", **{"class": "ocf"})
        attrs = etree.SubElement(primitive, "instance_attributes",
                                 id=f"{node.name}-instance_attributes")
        for name, value in (("server", str(node.address)),
                            ("reconnect_interval", RECONNECT_INTERVAL)):
            etree.SubElement(attrs, "nvpair", id=f"{node.name}-instance_attributes-{name}",
                             name=name, value=value)
        ops = etree.SubElement(primitive, "operations")
        for name, interval, timeout in (("monitor", MONITOR_INTERVAL, MONITOR_TIMEOUT),
                                        ("start", "0s", START_TIMEOUT)):
            etree.SubElement(ops, "op", id=f"{node.name}-{name}-interval-{interval}",
                             name=name, interval=interval, timeout=timeout)
    return etree.tostring(resources)
