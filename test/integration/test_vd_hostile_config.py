"""Hostile configs against a real libvirtd + QEMU (issue 8): the entity trick that made
stop shut down another VM, and configs whose read used to hang every action."""
import os
import time
import uuid

import libvirt
import pytest

from support.libvirt_node import domain_xml

pytestmark = pytest.mark.libvirt


@pytest.fixture
def bystander(node, tmp_path):
    """A running VM that is not ours: the entity config names it once entities are expanded
    differently."""
    name = f"b{uuid.uuid4().hex[:7]}"
    config = tmp_path / f"{name}.xml"
    config.write_text(domain_xml(name))
    assert node.agent("start", {"config": str(config)}, {"timeout": "60000"}).returncode == 0
    yield name
    conn = node.connect()
    try:
        conn.lookupByName(name).destroy()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()


def active(node, name):
    conn = node.connect()
    try:
        return conn.lookupByName(name).isActive()
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def test_entity_config_is_refused_and_stop_leaves_the_other_vm_running(node, bystander, tmp_path):
    xml = domain_xml(bystander + "2").replace(f"<name>{bystander}2</name>", f"<name>{bystander}&x;</name>")
    config = tmp_path / "entity.xml"
    config.write_text(f'<!DOCTYPE domain [<!ENTITY x "2">]>\n{xml}')
    env = {"OCF_RESOURCE_INSTANCE": "entityvm"}
    started = node.agent("start", {"config": str(config)}, {"timeout": "30000"}, env=env)
    assert started.returncode == 6 and "DOCTYPE" in started.stderr
    assert not active(node, bystander + "2")
    stopped = node.agent("stop", {"config": str(config)}, {"timeout": "30000"}, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert active(node, bystander)


@pytest.mark.parametrize("action, meta, rc", [
    ("start", {"timeout": "10000"}, 6),
    ("validate-all", {"timeout": "10000"}, 6),
    ("monitor", {"interval": "0", "timeout": "10000"}, 7),
    ("stop", {"timeout": "10000"}, 0),
])
def test_fifo_config_ends_every_action_at_once(node, tmp_path, action, meta, rc):
    config = tmp_path / "fifo.xml"
    os.mkfifo(config)
    began = time.monotonic()
    done = node.agent(action, {"config": str(config)}, meta, env={"OCF_CHECK_LEVEL": "10",
                                                                  "OCF_RESOURCE_INSTANCE": "fifovm"}, timeout=20)
    assert done.returncode == rc, done.stderr
    assert time.monotonic() - began < 8
    assert "Traceback" not in done.stderr
