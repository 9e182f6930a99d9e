"""The VirtualDomain agent against hostile input (issue 8), on libvirt's test driver.

In-process runs share test:///default, whose running domain "test" plays the unrelated VM
an entity trick used to make stop shut down. The fuzz part runs the real agent script over
generated hostile parameters and configs: every run must end with a documented OCF code,
exactly one exit reason when it failed, no traceback, and inside its timeout.
"""
import itertools
import os
import random
import stat
import subprocess
import sys
import time

import libvirt
import pytest

from ocf_ravada.agent import run
from ocf_ravada.ocf import Rc
from ocf_ravada.vdomain.agent import VirtualDomain
from ocf_ravada.virt.connection import Hypervisor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(REPO, "agents", "VirtualDomain")
XML = """<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>2</vcpu>
<os><type>hvm</type></os></domain>"""
ENTITY_XML = ('<!DOCTYPE domain [<!ENTITY x "2">]><domain type="test"><name>test&x;</name>'
              '<memory unit="MiB">128</memory><os><type>hvm</type></os></domain>')
DOCUMENTED = {int(rc) for rc in Rc}


@pytest.fixture
def hv():
    conn = libvirt.open("test:///default")   # keeps the driver's state for the test
    yield conn
    for dom in conn.listAllDomains():
        if dom.name() != "test":
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
    if not conn.lookupByName("test").isActive():
        conn.lookupByName("test").create()
    conn.close()


@pytest.fixture
def env(tmp_path):
    return {"OCF_RESKEY_hypervisor": "test:///default", "OCF_RESOURCE_INSTANCE": "hostile",
            "HA_RSCTMP": str(tmp_path / "rsctmp"), "OCF_RESKEY_CRM_meta_timeout": "10000"}


def act(action, env, **extra):
    return run(VirtualDomain, ["VirtualDomain", action], {**env, **extra})


def reasons(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("ocf-exit-reason:")]


def test_an_entity_in_the_config_is_refused_and_never_stops_another_domain(hv, env, tmp_path, capsys):
    config = tmp_path / "entity.xml"
    config.write_text(ENTITY_XML)
    extra = {"OCF_RESKEY_config": str(config)}
    assert act("validate-all", env, OCF_CHECK_LEVEL="10", **extra) == Rc.ERR_CONFIGURED
    assert "DOCTYPE" in reasons(capsys)[0]
    assert act("start", env, **extra) == Rc.ERR_CONFIGURED
    assert "test2" not in [d.name() for d in hv.listAllDomains()]
    capsys.readouterr()
    # Stop and probes must not take the unrelated running domain "test" for ours.
    assert act("monitor", env, OCF_RESKEY_CRM_meta_interval="0", **extra) == Rc.NOT_RUNNING
    assert act("stop", env, **extra) == Rc.SUCCESS
    assert hv.lookupByName("test").isActive()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "symlink-to-fifo", "directory", "huge", "binary"])
def test_config_that_is_not_a_small_regular_text_file_is_refused(hv, env, tmp_path, capsys, kind):
    config = tmp_path / "vm.xml"
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", config)
    elif kind == "symlink-to-fifo":
        os.mkfifo(tmp_path / "fifo")
        os.symlink(tmp_path / "fifo", config)
    elif kind == "directory":
        config.mkdir()
    elif kind == "huge":
        config.write_text("<domain><name>x</name>" + " " * (5 * 1024 * 1024) + "</domain>")
    else:
        config.write_bytes(b"<domain><name>\xff\xfe</name></domain>")
    extra = {"OCF_RESKEY_config": str(config)}
    started = time.monotonic()
    assert act("start", env, **extra) == Rc.ERR_CONFIGURED
    assert len(reasons(capsys)) == 1
    assert act("validate-all", env, OCF_CHECK_LEVEL="10", **extra) == Rc.ERR_CONFIGURED
    assert act("monitor", env, OCF_RESKEY_CRM_meta_interval="0", **extra) == Rc.NOT_RUNNING
    assert act("stop", env, **extra) == Rc.SUCCESS
    assert time.monotonic() - started < 5


def test_stop_and_probe_with_domain_set_do_not_read_the_config(hv, env, tmp_path):
    config = tmp_path / "vm.xml"
    config.write_text(XML.format(name="named"))
    extra = {"OCF_RESKEY_config": str(config), "OCF_RESKEY_domain": "named"}
    assert act("start", env, **extra) == Rc.SUCCESS
    config.unlink()
    os.mkfifo(config)   # a read would block without O_NONBLOCK; with domain= none happens
    assert act("monitor", env, OCF_RESKEY_CRM_meta_interval="0", **extra) == Rc.SUCCESS
    assert act("stop", env, **extra) == Rc.SUCCESS
    with pytest.raises(libvirt.libvirtError):
        hv.lookupByName("named")


@pytest.mark.parametrize("name", ["domain", "hypervisor", "migration_user"])
def test_undecodable_parameters_are_refused_not_a_traceback(hv, env, tmp_path, capsys, name):
    config = tmp_path / "vm.xml"
    config.write_text(XML.format(name="utf"))
    undecodable = b"\xff".decode("utf-8", "surrogateescape")
    extra = {"OCF_RESKEY_config": str(config), f"OCF_RESKEY_{name}": undecodable,
             "HA_LOGFILE": str(tmp_path / "ha.log")}
    assert act("start", env, **extra) == Rc.ERR_CONFIGURED
    (reason,) = reasons(capsys)
    assert "not valid UTF-8" in reason
    assert act("status", env, **extra) == Rc.NOT_RUNNING
    assert act("stop", env, **extra) == Rc.SUCCESS
    assert "Traceback" not in capsys.readouterr().err + (tmp_path / "ha.log").read_text()


class FailingStatus(VirtualDomain):
    """status asks libvirt for something it refuses: the error path of any action."""

    def status(self) -> int:
        hv = Hypervisor.connect("test:///default", self.deadline)
        hv.call("starting the running domain test", hv.conn.lookupByName("test").create)
        return Rc.SUCCESS


def test_a_libvirt_error_is_a_failure_with_its_reason_not_an_internal_error(hv, env, tmp_path, capsys):
    (tmp_path / "vm.xml").write_text(XML.format(name="x"))
    rc = run(FailingStatus, ["VirtualDomain", "status"], {**env, "OCF_RESKEY_config": str(tmp_path / "vm.xml")})
    assert rc == Rc.ERR_GENERIC
    (reason,) = reasons(capsys)
    assert "internal error in" not in reason and "starting the running domain test" in reason


def test_saved_definition_with_a_password_is_written_0600(hv, env, tmp_path):
    config = tmp_path / "vm.xml"
    config.write_text(XML.format(name="secretvm").replace(
        "</domain>", "<devices><graphics type='vnc' port='-1' passwd='s3cret'/></devices></domain>"))
    os.chmod(config, 0o644)
    extra = {"OCF_RESKEY_config": str(config), "OCF_RESKEY_save_config_on_stop": "true"}
    assert act("start", env, **extra) == Rc.SUCCESS
    assert act("stop", env, **extra) == Rc.SUCCESS
    assert "s3cret" in config.read_text() and "<uuid>" in config.read_text()   # it was rewritten
    assert oct(os.stat(config).st_mode & 0o777) == oct(0o600)


def test_save_config_on_stop_leaves_a_config_that_is_no_longer_a_file_alone(hv, env, tmp_path):
    config = tmp_path / "vm.xml"
    config.write_text(XML.format(name="savevm"))
    extra = {"OCF_RESKEY_config": str(config), "OCF_RESKEY_domain": "savevm",
             "OCF_RESKEY_save_config_on_stop": "true"}
    assert act("start", env, **extra) == Rc.SUCCESS
    config.unlink()
    os.mkfifo(config)
    started = time.monotonic()
    assert act("stop", env, **extra) == Rc.SUCCESS
    assert time.monotonic() - started < 5
    assert stat.S_ISFIFO(os.lstat(config).st_mode)
    with pytest.raises(libvirt.libvirtError):
        hv.lookupByName("savevm")


# -- fuzz: the real agent script over generated hostile inputs ----------------------------------

HOSTILE_VALUES = ["inf", "nan", "-1", "1e309", "99999999999999999999999", "1_0", "\u0663", "", " ",
                  "a" * 5000, "x\ny", "$(touch /tmp/pwned)", "`id`", "../../etc/passwd", "%n%n%n",
                  "@host:22/x?", "\\", "'\"", "\udcff"]
PARAMETERS = ["migration_speed", "migration_downtime", "destroy_reserve", "migrateport",
              "migration_network_suffix", "migration_user", "shutdown_mode", "domain", "hypervisor",
              "force_stop", "snapshot", "migrate_options", "monitor_scripts_timeout", "migration_abort"]
CONFIG_KINDS = ["good", "entity", "external-dtd", "laughs", "fifo", "dev-zero", "symlink", "binary",
                "huge-name", "not-xml", "no-name", "missing", "relative"]


def _config(tmp_path, kind: str, index: int) -> str:
    path = tmp_path / f"c{index}.xml"
    if kind == "good":
        path.write_text(XML.format(name=f"fuzz{index}"))
    elif kind == "entity":
        path.write_text(ENTITY_XML)
    elif kind == "external-dtd":
        path.write_text('<!DOCTYPE domain SYSTEM "/etc/passwd"><domain><name>x</name></domain>')
    elif kind == "laughs":
        path.write_text('<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                        '<domain><name>&b;</name></domain>')
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "symlink":
        os.symlink("/proc/self/fd/0", path)
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 10)
    elif kind == "huge-name":
        path.write_text(XML.format(name="n" * 100000))
    elif kind == "not-xml":
        path.write_text("{json: true}")
    elif kind == "no-name":
        path.write_text("<domain type='test'/>")
    elif kind == "relative":
        return "relative/vm.xml"
    return str(path)


def _cases(tmp_path, seed: int = 8):
    """Every action with every kind of config, each with up to three hostile parameters."""
    rng = random.Random(seed)
    actions = ["start", "stop", "monitor", "validate-all", "migrate_to", "migrate_from", "reload-agent", "status"]
    combos = list(itertools.product(actions, CONFIG_KINDS))
    rng.shuffle(combos)
    for index, (action, kind) in enumerate(combos):
        env = {"OCF_RESKEY_config": _config(tmp_path, kind, index)}
        for name in rng.sample(PARAMETERS, rng.randint(0, 3)):
            env[f"OCF_RESKEY_{name}"] = rng.choice(HOSTILE_VALUES)
        if action == "monitor" and rng.random() < 0.5:
            env["OCF_RESKEY_CRM_meta_interval"] = "10000"
        if action == "migrate_to":
            env["OCF_RESKEY_CRM_meta_migrate_target"] = rng.choice(["node2", "node2@evil:22/x?", "a b"])
        if rng.random() < 0.3:
            env["OCF_CHECK_LEVEL"] = rng.choice(["10", "20", "junk"])
        yield action, kind, env


def _encode(env):
    return {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in env.items()}


@pytest.mark.parametrize("seed", [3, 8])
def test_fuzz_every_run_ends_cleanly(tmp_path, seed):
    log = tmp_path / "ha.log"
    failures = []
    for action, kind, extra in _cases(tmp_path, seed):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OCF_RESOURCE_INSTANCE": "fuzz",
               "OCF_RESKEY_hypervisor": "test:///default", "HA_RSCTMP": str(tmp_path / "rsctmp"),
               "HA_LOGFILE": str(log), "OCF_RESKEY_CRM_meta_timeout": "8000", **extra}
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, AGENT, action], env=_encode(env), capture_output=True,
                                  timeout=12, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            failures.append((action, kind, extra, "hung"))
            continue
        elapsed = time.monotonic() - started
        err = done.stderr.decode("utf-8", "replace")
        exit_reasons = [line for line in err.splitlines() if line.startswith("ocf-exit-reason:")]
        problem = None
        if done.returncode not in DOCUMENTED:
            problem = f"undocumented rc {done.returncode}"
        elif "Traceback" in err or "internal error" in err:
            problem = "traceback"
        elif done.returncode not in (Rc.SUCCESS, Rc.NOT_RUNNING) and len(exit_reasons) != 1:
            problem = f"{len(exit_reasons)} exit reasons"
        elif elapsed > 10:
            problem = f"took {elapsed:.1f}s"
        if problem:
            failures.append((action, kind, extra, problem, err[-500:]))
    assert failures == []
    assert "Traceback" not in log.read_text(errors="replace")
