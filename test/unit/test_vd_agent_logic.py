"""ocf:ravada:VirtualDomain logic and bad input, on libvirt's in-process test driver.

The real-hypervisor proof is in test/integration; these cover codes and reasons fast.
"""
import libvirt
import pytest

from ocf_ravada.agent import run
from ocf_ravada.ocf import Rc
from ocf_ravada.vdomain.agent import VirtualDomain

XML = """<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>
<memory unit='MiB'>128</memory><vcpu>2</vcpu><os><type>hvm</type></os></domain>"""
UUID = "0b3e8c7a-1111-4c3b-9d7e-000000000001"


@pytest.fixture
def hv():
    # The test driver's state lives while one connection is open.
    conn = libvirt.open("test:///default")
    yield conn
    for dom in conn.listAllDomains():
        if dom.name() != "test":
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()
    conn.close()


@pytest.fixture
def env(tmp_path):
    config = tmp_path / "vm.xml"
    config.write_text(XML.format(name="unitvm", uuid=UUID))
    return {"OCF_RESKEY_config": str(config), "OCF_RESKEY_hypervisor": "test:///default",
            "OCF_RESOURCE_INSTANCE": "unitvm", "HA_RSCTMP": str(tmp_path / "rsctmp"),
            "OCF_RESKEY_CRM_meta_timeout": "10000"}


def act(action, env, **extra):
    return run(VirtualDomain, ["VirtualDomain", action], {**env, **extra})


def probe(env, **extra):
    return act("monitor", env, OCF_RESKEY_CRM_meta_interval="0", **extra)


def test_start_monitor_stop_on_the_test_driver(hv, env):
    assert probe(env) == Rc.NOT_RUNNING
    assert act("start", env) == Rc.SUCCESS
    assert hv.lookupByName("unitvm").isActive()
    assert act("start", env) == Rc.SUCCESS
    assert act("monitor", env, OCF_RESKEY_CRM_meta_interval="10000") == Rc.SUCCESS
    assert act("stop", env) == Rc.SUCCESS
    with pytest.raises(libvirt.libvirtError):
        hv.lookupByName("unitvm")
    assert act("stop", env) == Rc.SUCCESS
    assert probe(env) == Rc.NOT_RUNNING


def test_paused_domain_counts_as_running(hv, env):
    assert act("start", env) == Rc.SUCCESS
    hv.lookupByName("unitvm").suspend()
    assert act("monitor", env, OCF_RESKEY_CRM_meta_interval="10000") == Rc.SUCCESS


def test_probe_without_any_way_to_name_the_domain_is_not_running(hv, env):
    assert probe(env, OCF_RESKEY_config="/nonexistent/vm.xml") == Rc.NOT_RUNNING


@pytest.mark.parametrize("extra, rc, reason", [
    ({"OCF_RESKEY_config": ""}, Rc.ERR_CONFIGURED, "required parameter 'config' is not set"),
    ({"OCF_RESKEY_config": "relative/vm.xml"}, Rc.ERR_CONFIGURED, "must be an absolute path"),
    ({"OCF_RESKEY_config": "/nonexistent/vm.xml"}, Rc.ERR_INSTALLED, "does not exist"),
    ({"OCF_RESKEY_migration_speed": "fast"}, Rc.ERR_CONFIGURED, "invalid value 'fast' for parameter 'migration_speed'"),
    ({"OCF_RESKEY_migration_downtime": "-5"}, Rc.ERR_CONFIGURED, "must be at least 0"),
    ({"OCF_RESKEY_force_stop": "perhaps"}, Rc.ERR_CONFIGURED, "expected a boolean"),
    ({"OCF_RESKEY_shutdown_mode": "acpi,reboot"}, Rc.ERR_CONFIGURED, "unknown mode(s) reboot"),
    ({"OCF_RESKEY_migration_transport": "carrier-pigeon"}, Rc.ERR_CONFIGURED, "expected one of ssh"),
    ({"OCF_RESKEY_force_stop": "1", "OCF_RESKEY_snapshot": "/var/lib/snap"}, Rc.ERR_CONFIGURED,
     "force_stop and snapshot cannot be used together"),
    ({"OCF_RESKEY_stateless": "true"}, Rc.ERR_CONFIGURED, "stateless needs backingfile"),
    ({"OCF_RESKEY_migrate_options": "--live --teleport"}, Rc.ERR_CONFIGURED, "unsupported option '--teleport'"),
    ({"OCF_RESKEY_migrate_options": "--bandwidth lots"}, Rc.ERR_CONFIGURED, "bad value 'lots' for --bandwidth"),
    ({"OCF_RESKEY_domain": "someone-else"}, Rc.ERR_CONFIGURED, "does not match <name>unitvm</name>"),
])
def test_bad_input_gets_the_documented_code_and_a_one_line_reason(hv, env, capsys, extra, rc, reason):
    assert act("start", env, **extra) == rc
    reasons = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ocf-exit-reason:")]
    assert len(reasons) == 1 and reason in reasons[0]
    with pytest.raises(libvirt.libvirtError):
        hv.lookupByName("unitvm")


@pytest.mark.parametrize("content, reason", [
    ("this is not xml", "not well-formed XML"),
    ("<network><name>n</name></network>", "root element is <network>"),
    ("<domain type='test'><vcpu>1</vcpu></domain>", "no <name>"),
    ("<domain type='test'><name>x</name><memory unit='parsecs'>1</memory></domain>", "unknown memory unit"),
])
def test_unusable_domain_xml_is_a_configuration_error(hv, env, tmp_path, capsys, content, reason):
    broken = tmp_path / "broken.xml"
    broken.write_text(content)
    assert act("start", env, OCF_RESKEY_config=str(broken)) == Rc.ERR_CONFIGURED
    assert reason in capsys.readouterr().err


def test_validate_all_level_0_checks_only_parameters(env):
    elsewhere = {"OCF_RESKEY_config": "/only/on/another/node.xml"}
    assert act("validate-all", env, **elsewhere) == Rc.SUCCESS
    assert act("validate-all", env, OCF_CHECK_LEVEL="10", **elsewhere) == Rc.ERR_INSTALLED
    assert act("validate-all", env, OCF_CHECK_LEVEL="10") == Rc.SUCCESS
    assert act("validate-all", env, OCF_RESKEY_migration_speed="x") == Rc.ERR_CONFIGURED


def test_stop_and_probe_tolerate_invalid_parameters(hv, env):
    assert act("start", env) == Rc.SUCCESS
    assert probe(env, OCF_RESKEY_migration_speed="garbage") == Rc.SUCCESS
    assert act("stop", env, OCF_RESKEY_migration_speed="garbage") == Rc.SUCCESS
    with pytest.raises(libvirt.libvirtError):
        hv.lookupByName("unitvm")


def test_migrate_to_requires_a_target(hv, env, capsys):
    assert act("start", env) == Rc.SUCCESS
    assert act("migrate_to", env) == Rc.ERR_CONFIGURED
    assert "migrate_target" in capsys.readouterr().err


def test_reload_agent_accepts_valid_and_rejects_invalid_tunables(hv, env):
    assert act("start", env) == Rc.SUCCESS
    assert act("reload-agent", env, OCF_RESKEY_migration_speed="200") == Rc.SUCCESS
    assert act("reload-agent", env, OCF_RESKEY_migration_speed="-1") == Rc.ERR_CONFIGURED
