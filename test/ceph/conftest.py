"""Fixtures for the real-Ceph tests: one throw-away cluster per session (about 2 s to start),
simulated nodes as network namespaces, QEMU's own RBD driver through qemu-io."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))          # node_agent, qemu_io (lib/ and lab/ come from test/conftest.py)

from ravada_lab.microceph import MicroCeph  # noqa: E402
from node_agent import NodeAgent  # noqa: E402
from qemu_io import QemuIO  # noqa: E402
from ocf_ravada.rbd import CephSession  # noqa: E402
from support.libvirt_node import LibvirtNode  # noqa: E402
from support.stack import require_stack as require_real_stack  # noqa: E402

QEMU_RBD_DRIVER = "/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so"


def _missing_stack() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, Ceph daemons)"
    for tool in ("ceph-mon", "ceph-osd", "ceph-authtool", "monmaptool", "qemu-io", "stdbuf", "ip"):
        if not shutil.which(tool):
            return f"{tool} not installed (tools/install-deps deps/ceph.list)"
    if not Path(QEMU_RBD_DRIVER).exists():
        return "QEMU's RBD driver missing (package qemu-block-extra)"
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError:
        return "python3-rados/python3-rbd missing (run with /usr/bin/python3)"
    return None


def require_stack() -> None:
    missing = _missing_stack()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"Ceph test stack missing in CI: {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="session")
def ceph(tmp_path_factory):
    require_stack()
    cluster = MicroCeph(tmp_path_factory.mktemp("microceph"), watch_timeout=10,
                        node_names=("node-a", "node-b", "node-c", "node-d", "node-e"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def qemu(ceph):
    """qemu_io(node, image, user='node') -> a running qemu-io with the image open; every one
    still running at the end of the test is killed (by its PID)."""
    started: list[QemuIO] = []

    def spawn(node: str, image: str, user: str = "node", wait_open: bool = True) -> QemuIO:
        proc = QemuIO(ceph, ceph.nodes[node], image, user)
        started.append(proc)
        if wait_open:
            proc.wait_open()
        return proc

    yield spawn
    for proc in started:
        proc.kill()


@pytest.fixture
def agents(ceph):
    """agents(node, image, ...) -> a NodeAgent (the agent's storage half starting a 'VM' on that
    node); every one is closed (its QEMU ended) after the test."""
    started: list[NodeAgent] = []

    def start(node: str, spec: str, **kwargs) -> NodeAgent:
        agent = NodeAgent(ceph, node, spec, **kwargs)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.close()


@pytest.fixture
def admin(ceph):
    """A session of client.admin (the test's own view of the cluster)."""
    with CephSession(str(ceph.conf), "admin", str(ceph.admin_keyring)) as session:
        yield session


@pytest.fixture
def image(ceph, request):
    """A fresh 64 MiB exclusive-lock image named after the test."""
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    return ceph.create_image(name)


@pytest.fixture(scope="module")
def libvirt_node(ceph, tmp_path_factory):
    require_real_stack("RBD guard with real libvirt", "libvirtd", "virtlogd", "qemu-system-x86_64", "unshare", "nsenter")
    node = LibvirtNode(str(tmp_path_factory.mktemp("libvirt-rbd")), "rbdnode")   # host network: node-r
    try:
        node.start()
        yield node
    finally:
        node.stop()
