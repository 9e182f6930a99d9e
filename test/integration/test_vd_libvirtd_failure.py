"""libvirtd dead or hung: the agent never hangs, and answers with the right codes."""
import time
import uuid

import psutil
import pytest

from support.libvirt_node import LibvirtNode, domain_xml
from support.stack import require_stack

pytestmark = pytest.mark.libvirt

PROBE = {"interval": "0", "timeout": "20000"}
MONITOR = {"interval": "10000", "timeout": "8000"}


@pytest.fixture
def fragile(tmp_path):
    """A node of our own: these tests kill and freeze its libvirtd."""
    require_stack("real libvirt tests", "libvirtd", "virtlogd", "qemu-system-x86_64")
    lv = LibvirtNode(str(tmp_path), "fragile")
    lv.start()
    name = f"t{uuid.uuid4().hex[:8]}"
    config = tmp_path / f"{name}.xml"
    config.write_text(domain_xml(name))
    try:
        yield lv, {"config": str(config)}, name
    finally:
        lv.stop()


def alive(pid):
    """Running, not a zombie: QEMU orphaned by a dead libvirtd may wait unreaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def qemu_of(node, name):
    return [p for p in node.qemu_pids()
            if f"guest={name}," in open(f"/proc/{p}/cmdline").read().replace("\0", " ")]


def test_dead_libvirtd_monitor_falls_back_to_the_qemu_process_and_stop_still_works(fragile):
    node, params, name = fragile
    assert node.agent("start", params, {"timeout": "60000"}).returncode == 0
    pid = qemu_of(node, name)[0]
    node.stop_libvirtd()

    monitor = node.agent("monitor", params, MONITOR)
    assert monitor.returncode == 0, monitor.stderr
    assert "QEMU of" in monitor.stderr and "reporting running" in monitor.stderr

    started = node.agent("start", params, {"timeout": "10000"})
    assert started.returncode == 1
    assert "ocf-exit-reason:cannot start" in started.stderr

    stopped = node.agent("stop", params, {"timeout": "20000"})
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(pid), "stop must not succeed while QEMU lives"
    assert node.agent("monitor", params, PROBE).returncode == 7


def test_dead_libvirtd_and_no_qemu_is_stopped(fragile):
    node, params, _name = fragile
    node.stop_libvirtd()
    assert node.agent("monitor", params, PROBE).returncode == 7
    assert node.agent("stop", params, {"timeout": "10000"}).returncode == 0


def test_hung_libvirtd_never_hangs_the_agent(fragile):
    node, params, name = fragile
    assert node.agent("start", params, {"timeout": "60000"}).returncode == 0
    node.freeze_libvirtd()
    try:
        begin = time.monotonic()
        monitor = node.agent("monitor", params, MONITOR, timeout=30)
        assert time.monotonic() - begin < 8, "monitor must answer inside its 8 s timeout"
        assert monitor.returncode == 0, monitor.stderr
        assert "libvirtd hung" in monitor.stderr

        begin = time.monotonic()
        started = node.agent("start", params, {"timeout": "6000"}, timeout=30)
        assert time.monotonic() - begin < 6
        assert started.returncode == 1 and "libvirtd hung" in started.stderr

        begin = time.monotonic()
        migrated = node.agent("migrate_to", params, {"timeout": "6000", "migrate_target": "elsewhere"}, timeout=30)
        assert time.monotonic() - begin < 6
        assert migrated.returncode == 1 and "ocf-exit-reason:" in migrated.stderr
    finally:
        node.thaw_libvirtd()
    assert node.agent("monitor", params, MONITOR).returncode == 0
    assert qemu_of(node, name)
