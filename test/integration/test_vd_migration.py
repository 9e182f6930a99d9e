"""Live migration between two real libvirtd nodes (own network + mount namespaces each)."""
import time
import uuid

import libvirt
import pytest

from support.libvirt_node import (LibvirtNode, connect_pair, dirtier_disk_xml, domain_xml,
                                  write_memory_dirtier)
from support.stack import require_stack

pytestmark = pytest.mark.libvirt

ADDRESSES = {"mignode1": "10.213.7.1", "mignode2": "10.213.7.2"}


@pytest.fixture
def pair(tmp_path_factory):
    """Fresh nodes per test: a libvirtd that has already migrated a guest sometimes lets the
    next migration converge although the guest dirties memory faster than the bandwidth."""
    require_stack("real libvirt migration tests", "libvirtd", "virtlogd", "qemu-system-x86_64", "ip")
    workdir = str(tmp_path_factory.mktemp("migration"))
    nodes = [LibvirtNode(workdir, name, network=True, listen_tcp=True) for name in ADDRESSES]
    try:
        for lv in nodes:
            lv.start(hosts=ADDRESSES)
        connect_pair(nodes[0], nodes[1], ADDRESSES["mignode1"], ADDRESSES["mignode2"])
        yield nodes
    finally:
        for lv in nodes:
            lv.stop()


@pytest.fixture
def vm(pair, tmp_path):
    name = f"m{uuid.uuid4().hex[:8]}"
    config = tmp_path / f"{name}.xml"
    config.write_text(domain_xml(name, memory_mib=128))
    yield {"config": str(config), "migration_transport": "tcp"}, name
    for lv in pair:
        conn = lv.connect()
        try:
            conn.lookupByName(name).destroy()
        except libvirt.libvirtError:
            pass
        conn.close()


def domain_on(node, name):
    conn = node.connect()
    try:
        dom = conn.lookupByName(name)
        return dom.ID(), dom.state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def wait_busy(node, name, cpu_seconds=2.0):
    """Wait until the dirtier runs (firmware boot is short; the loop burns CPU)."""
    conn = node.connect()
    try:
        dom = conn.lookupByName(name)
        for _ in range(100):
            if dom.info()[4] >= cpu_seconds * 1e9:
                return
            time.sleep(0.1)
    finally:
        conn.close()
    raise AssertionError(f"{name} never got busy")


def test_live_migration_moves_the_running_guest(pair, vm):
    src, dst = pair
    params, name = vm
    assert src.agent("start", params, {"timeout": "60000"}).returncode == 0
    conn = src.connect()
    uuid_before = conn.lookupByName(name).UUIDString()
    conn.close()

    moved = src.agent("migrate_to", {**params, "migration_speed": "100", "migration_downtime": "300"},
                      {"timeout": "60000", "migrate_target": "mignode2", "migrate_source": "mignode1"})
    assert moved.returncode == 0, moved.stderr
    assert "migrating" in moved.stderr and "migrated" in moved.stderr
    assert domain_on(src, name) is None
    arrived = dst.agent("migrate_from", params, {"timeout": "30000", "migrate_source": "mignode1"})
    assert arrived.returncode == 0, arrived.stderr
    _id, state = domain_on(dst, name)
    assert state == libvirt.VIR_DOMAIN_RUNNING
    conn = dst.connect()
    assert conn.lookupByName(name).UUIDString() == uuid_before
    conn.close()
    # Pacemaker then stops the source: the domain is gone there, which is success.
    assert src.agent("stop", params, {"timeout": "20000"}).returncode == 0
    assert dst.agent("monitor", params, {"interval": "10000", "timeout": "20000"}).returncode == 0
    assert src.agent("monitor", params, {"interval": "0", "timeout": "20000"}).returncode == 7


def test_migration_that_cannot_finish_in_time_is_aborted_before_the_timeout(pair, vm, tmp_path):
    """The guest rewrites 512 KiB of RAM in a loop; at 1 MiB/s the migration never
    converges. The agent aborts the job before Pacemaker's 10 s timeout and the guest keeps
    running on the source."""
    src, dst = pair
    _params, name = vm
    disk = write_memory_dirtier(str(tmp_path / "dirtier.img"))
    big = tmp_path / "busy.xml"
    big.write_text(domain_xml(name, extra_devices=dirtier_disk_xml(disk)))
    params = {"config": str(big), "migration_transport": "tcp"}
    assert src.agent("start", params, {"timeout": "60000"}).returncode == 0
    wait_busy(src, name)
    begin = time.monotonic()
    # The boot disk is one file both nodes see: tell libvirt it is shared storage.
    moved = src.agent("migrate_to", {**params, "migration_speed": "1", "migration_abort": "5",
                                     "migrate_options": "--unsafe"},
                      {"timeout": "10000", "migrate_target": "mignode2"})
    elapsed = time.monotonic() - begin
    assert moved.returncode == 1, moved.stderr
    assert elapsed < 10, f"migrate_to took {elapsed:.1f}s, past its 10 s timeout"
    assert "aborting it before the timeout" in moved.stderr
    assert f"ocf-exit-reason:migration of {name} to mignode2 aborted" in moved.stderr
    assert domain_on(src, name)[1] == libvirt.VIR_DOMAIN_RUNNING
    assert domain_on(dst, name) is None
    assert src.agent("monitor", params, {"interval": "10000", "timeout": "20000"}).returncode == 0
