"""ocf:ravada:basesync on a ravada-lab, set up as the README tells an admin to: shared by
test/e2e/test_lab_basesync.py and bench/basesync.

Every node serves DIRECTORY read-only to one basesync key (forced command `rrsync -ro
DIRECTORY`, restrict) next to the lab's own root key; host keys are the ones `ravada-lab up`
put in every node's /etc/ssh/ssh_known_hosts. The key pair lives in a host directory every
node sees at the same path.
"""
from __future__ import annotations

import os
import subprocess
import time

from lxml import etree

from ravada_lab.state import LabState, node_run

DIRECTORY = "/var/lib/libvirt/images"
KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
RESOURCE = "basesync"


def make_key(directory: str) -> str:
    key = os.path.join(directory, "basesync_key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "basesync", "-f", key], check=True)
    return key


def prepare_nodes(state: LabState, key: str, nodes: list[str] | None = None) -> None:
    """The base directory on every node, and the key authorised read-only for it."""
    with open(key + ".pub") as handle:
        public = handle.read().strip()
    line = f'command="/usr/bin/rrsync -ro {DIRECTORY}",restrict {public}'
    for node in nodes or state.node_names:
        node_run(state, node, ["mkdir", "-p", DIRECTORY])
        node_run(state, node, ["/usr/bin/python3", "-c",
                               "import sys; open('/root/.ssh/authorized_keys', 'a').write(sys.argv[1] + '\\n')",
                               line])


def create_clone(state: LabState, key: str, *params: str, via: str = "node1") -> None:
    """`pcs resource create ... ocf:ravada:basesync ... clone`, as the README shows."""
    node_run(state, via, ["pcs", "resource", "create", RESOURCE, "ocf:ravada:basesync", "source=node1",
                          f"directory={DIRECTORY}", f"ssh_key={key}", f"known_hosts={KNOWN_HOSTS}",
                          *params, "op", "monitor", "interval=10s", "clone", "interleave=true"])


def write_base(state: LabState, node: str, file: str, size_mib: int) -> None:
    """A base of random bytes (nothing compresses or dedups it) in DIRECTORY on `node`."""
    node_run(state, node, ["dd", "if=/dev/urandom", f"of={DIRECTORY}/{file}", "bs=1M",
                           f"count={size_mib}", "status=none"], timeout=300)


def add_base(state: LabState, file: str, name: str, nodes: list[str] | None = None, via: str = "node1") -> str:
    """ravada-basesync add on the main node; the base's SHA-256."""
    argv = ["ravada-basesync", "add", DIRECTORY, file, "--name", name]
    if nodes:
        argv += ["--nodes", ",".join(nodes)]
    out = node_run(state, via, argv, timeout=300).stdout
    return out.split("sha256 ")[1].split()[0]


def remove_base(state: LabState, name: str, via: str = "node1") -> None:
    node_run(state, via, ["ravada-basesync", "remove", DIRECTORY, name])


def base_attributes(state: LabState, name: str, via: str | None = None) -> dict[str, str]:
    """Node -> value of ravada-base-<name>, as the CIB holds it."""
    node = via or state.healthy_nodes()[0]
    out = node_run(state, node, ["cibadmin", "--query", "--scope", "status"]).stdout
    root = etree.fromstring(out.encode())
    found = {}
    for node_state in root.iter("node_state"):
        for nvpair in node_state.iterfind("transient_attributes/instance_attributes/nvpair"):
            if nvpair.get("name") == f"ravada-base-{name}":
                found[node_state.get("uname")] = nvpair.get("value")
    return found


def wait_attributes(state: LabState, name: str, expected: dict[str, str], timeout: float,
                    poll: float = 0.5, via: str | None = None) -> float:
    """Seconds until ravada-base-<name> is exactly `expected` on the nodes named there."""
    start = time.monotonic()
    while True:
        seen = base_attributes(state, name, via)
        if all(seen.get(n) == v for n, v in expected.items()):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"ravada-base-{name}: expected {expected}, have {seen}")
        time.sleep(poll)


def file_on(state: LabState, node: str, file: str) -> bool:
    return node_run(state, node, ["test", "-f", f"{DIRECTORY}/{file}"], check=False).returncode == 0


def status_of(state: LabState, node: str) -> dict:
    """The worker's report on `node` (HA_RSCTMP of Pacemaker's agents)."""
    import json

    out = node_run(state, node, ["sh", "-c", f"cat /run/resource-agents/basesync-status-{RESOURCE}*.state"],
                   check=False).stdout
    return json.loads(out) if out.strip() else {}
