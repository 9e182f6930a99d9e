"""ocf:ravada:VirtualDomain driven as Pacemaker drives it, against a real libvirtd + QEMU."""
import os
import time
import uuid

import libvirt
import pytest

from support.libvirt_node import domain_xml

pytestmark = pytest.mark.libvirt

PROBE = {"interval": "0", "timeout": "20000"}
MONITOR = {"interval": "10000", "timeout": "20000"}


@pytest.fixture
def vm(node, tmp_path):
    """A fresh domain config per test; whatever the test leaves running is destroyed."""
    name = f"t{uuid.uuid4().hex[:8]}"
    config = tmp_path / f"{name}.xml"
    config.write_text(domain_xml(name))
    yield {"name": name, "config": str(config)}
    conn = node.connect()
    try:
        dom = conn.lookupByName(name)
        dom.destroy()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()


def run(node, action, vm, meta=None, **params):
    return node.agent(action, {"config": vm["config"], **params}, meta)


def state_of(node, name):
    conn = node.connect()
    try:
        return conn.lookupByName(name).state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def qemu_pids_of(node, name):
    pids = node.qemu_pids()
    return [p for p in pids if f"guest={name}" in open(f"/proc/{p}/cmdline").read().replace("\0", " ")]


def test_probe_start_monitor_stop_cycle(node, vm):
    assert run(node, "monitor", vm, PROBE).returncode == 7

    started = run(node, "start", vm, {"timeout": "60000"})
    assert started.returncode == 0, started.stderr
    assert state_of(node, vm["name"]) == libvirt.VIR_DOMAIN_RUNNING
    pids = qemu_pids_of(node, vm["name"])
    assert len(pids) == 1

    again = run(node, "start", vm, {"timeout": "60000"})
    assert again.returncode == 0, again.stderr
    assert qemu_pids_of(node, vm["name"]) == pids, "a second start must not start a second QEMU"

    assert run(node, "monitor", vm, MONITOR).returncode == 0
    assert run(node, "monitor", vm, PROBE).returncode == 0
    assert run(node, "status", vm).returncode == 0

    stopped = run(node, "stop", vm, {"timeout": "30000"})
    assert stopped.returncode == 0, stopped.stderr
    assert state_of(node, vm["name"]) is None
    assert not os.path.exists(f"/proc/{pids[0]}")
    assert run(node, "monitor", vm, MONITOR).returncode == 7
    assert run(node, "stop", vm, {"timeout": "30000"}).returncode == 0


def test_stop_of_guest_ignoring_acpi_escalates_to_destroy_within_timeout(node, vm):
    # The guest has no OS: it never reacts to the ACPI power button.
    assert run(node, "start", vm, {"timeout": "60000"}).returncode == 0
    begin = time.monotonic()
    stopped = run(node, "stop", vm, {"timeout": "12000"}, destroy_reserve="4")
    elapsed = time.monotonic() - begin
    assert stopped.returncode == 0, stopped.stderr
    assert "did not shut down gracefully; destroying it" in stopped.stderr
    assert elapsed < 12, f"stop took {elapsed:.1f}s, longer than its 12 s timeout"
    assert state_of(node, vm["name"]) is None
    assert qemu_pids_of(node, vm["name"]) == []


def test_force_stop_destroys_at_once(node, vm):
    assert run(node, "start", vm, {"timeout": "60000"}).returncode == 0
    stopped = run(node, "stop", vm, {"timeout": "30000"}, force_stop="true")
    assert stopped.returncode == 0, stopped.stderr
    assert "waiting up to" not in stopped.stderr
    assert state_of(node, vm["name"]) is None


def test_shutdown_mode_falls_back_when_the_agent_mode_is_refused(node, vm):
    assert run(node, "start", vm, {"timeout": "60000"}).returncode == 0
    stopped = run(node, "stop", vm, {"timeout": "16000"}, shutdown_mode="agent,acpi", destroy_reserve="4")
    assert stopped.returncode == 0, stopped.stderr
    assert "shutdown request (agent)" in stopped.stderr and "refused" in stopped.stderr
    assert "(acpi)" in stopped.stderr
    assert state_of(node, vm["name"]) is None


def test_probe_and_stop_work_with_an_unreadable_config(node, vm):
    """The anchor reports 'stopped' here without asking libvirt: a double-start risk."""
    assert run(node, "start", vm, {"timeout": "60000"}).returncode == 0
    os.rename(vm["config"], vm["config"] + ".away")
    probe = run(node, "monitor", vm, PROBE)
    assert probe.returncode == 0, "a running domain must be found although its config is gone"
    stopped = run(node, "stop", vm, {"timeout": "20000"}, force_stop="true")
    assert stopped.returncode == 0, stopped.stderr
    assert state_of(node, vm["name"]) is None


def test_domain_parameter_identifies_the_domain_without_any_config(node, vm):
    assert run(node, "start", vm, {"timeout": "60000"}).returncode == 0
    ghost = {"config": "/nonexistent/elsewhere.xml"}
    probe = node.agent("monitor", {**ghost, "domain": vm["name"]}, PROBE,
                       env={"OCF_RESOURCE_INSTANCE": "other"})
    assert probe.returncode == 0, probe.stderr


def test_depth_20_runs_monitor_scripts_with_a_timeout(node, vm, tmp_path):
    ok, bad, slow = tmp_path / "ok.sh", tmp_path / "bad.sh", tmp_path / "slow.sh"
    ok.write_text('#!/bin/sh\n[ -n "$DOMAIN_NAME" ]\n')
    bad.write_text("#!/bin/sh\necho 'web service down'\nexit 3\n")
    slow.write_text("#!/bin/sh\nsleep 30\n")
    for script in (ok, bad, slow):
        script.chmod(0o755)
    assert run(node, "start", vm, {"timeout": "60000"}, monitor_scripts=str(ok)).returncode == 0

    deep = {"OCF_CHECK_LEVEL": "20"}
    passing = node.agent("monitor", {"config": vm["config"], "monitor_scripts": str(ok)}, MONITOR, env=deep)
    assert passing.returncode == 0, passing.stderr
    failing = node.agent("monitor", {"config": vm["config"], "monitor_scripts": f"{ok} {bad}"}, MONITOR, env=deep)
    assert failing.returncode == 1
    assert f"ocf-exit-reason:monitor script {bad} failed with exit 3: web service down" in failing.stderr
    begin = time.monotonic()
    hanging = node.agent("monitor", {"config": vm["config"], "monitor_scripts": str(slow),
                                     "monitor_scripts_timeout": "2"}, MONITOR, env=deep)
    assert hanging.returncode == 1 and "did not finish within 2s" in hanging.stderr
    assert time.monotonic() - begin < 10
    shallow = node.agent("monitor", {"config": vm["config"], "monitor_scripts": str(bad)}, MONITOR)
    assert shallow.returncode == 0, "level 0 monitors do not run the scripts"


def test_depth_10_without_guest_agent_channel_checks_state_only(node, vm):
    assert run(node, "start", vm, {"timeout": "60000"}).returncode == 0
    deep = node.agent("monitor", {"config": vm["config"]}, MONITOR, env={"OCF_CHECK_LEVEL": "10"})
    assert deep.returncode == 0, deep.stderr


def test_depth_10_fails_when_the_guest_agent_does_not_answer(node, tmp_path):
    name = f"t{uuid.uuid4().hex[:8]}"
    config = tmp_path / f"{name}.xml"
    channel = ("<channel type='unix'><source mode='bind'/>"
               "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>")
    config.write_text(domain_xml(name, extra_devices=channel))
    params = {"config": str(config)}
    try:
        assert node.agent("start", params, {"timeout": "60000"}).returncode == 0
        deep = node.agent("monitor", params, MONITOR, env={"OCF_CHECK_LEVEL": "10"})
        assert deep.returncode == 1
        assert f"ocf-exit-reason:guest agent of {name} does not answer" in deep.stderr
    finally:
        assert node.agent("stop", {**params, "force_stop": "1"}, {"timeout": "20000"}).returncode == 0


def test_save_config_on_stop_writes_back_only_a_changed_definition(node, vm):
    assert run(node, "start", vm, {"timeout": "60000"}).returncode == 0
    before = open(vm["config"]).read()
    conn = node.connect()
    try:
        dom = conn.lookupByName(vm["name"])
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "edited while running", None, None,
                        libvirt.VIR_DOMAIN_AFFECT_LIVE)
    finally:
        conn.close()
    stopped = run(node, "stop", vm, {"timeout": "20000"}, force_stop="1", save_config_on_stop="1")
    assert stopped.returncode == 0, stopped.stderr
    after = open(vm["config"]).read()
    assert after != before and "edited while running" in after
    # The saved file starts the same domain again.
    assert run(node, "start", vm, {"timeout": "60000"}).returncode == 0


def test_snapshot_saves_ram_on_stop_and_restores_it_on_start(node, vm, tmp_path):
    snapdir = tmp_path / "snapshots"
    snapdir.mkdir()
    assert run(node, "start", vm, {"timeout": "60000"}, snapshot=str(snapdir)).returncode == 0
    stopped = run(node, "stop", vm, {"timeout": "60000"}, snapshot=str(snapdir))
    assert stopped.returncode == 0, stopped.stderr
    saved = snapdir / f"{vm['name']}.state"
    assert saved.exists() and state_of(node, vm["name"]) is None
    restored = run(node, "start", vm, {"timeout": "60000"}, snapshot=str(snapdir))
    assert restored.returncode == 0, restored.stderr
    assert f"restored {vm['name']}" in restored.stderr
    assert not saved.exists()
    assert state_of(node, vm["name"]) == libvirt.VIR_DOMAIN_RUNNING


def test_a_different_domain_with_the_same_name_is_refused(node, vm):
    conn = node.connect()
    try:
        conn.defineXML(domain_xml(vm["name"]))  # same name, another UUID
    finally:
        conn.close()
    try:
        started = run(node, "start", vm, {"timeout": "30000"})
        assert started.returncode == 5
        assert "another domain named" in started.stderr
    finally:
        conn = node.connect()
        conn.lookupByName(vm["name"]).undefine()
        conn.close()


def test_crashed_start_gives_a_readable_reason(node, vm, tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text(domain_xml(vm["name"], extra_devices="<disk type='file' device='disk'>"
                                 "<source file='/nonexistent/disk.img'/><target dev='vda' bus='virtio'/></disk>"))
    started = node.agent("start", {"config": str(broken)}, {"timeout": "30000"})
    assert started.returncode == 1
    assert "ocf-exit-reason:failed to start" in started.stderr and "/nonexistent/disk.img" in started.stderr
