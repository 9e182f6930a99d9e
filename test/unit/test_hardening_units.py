"""Issue 8 defects in the framework and helpers, each with the input that used to break it."""
import io
import multiprocessing
import os
import stat
import subprocess
import sys
import time

import libvirt
import pytest

from ocf_ravada.deadline import Deadline, parse_seconds
from ocf_ravada.log import Log
from ocf_ravada.ocf import Environment, OcfError, Rc
from ocf_ravada.params import Parameter, parse_all
from ocf_ravada.statefile import StateFile, UnsafeState
from ocf_ravada.vdomain import hostorder, migration
from ocf_ravada.vdomain.parameters import PARAMETERS
from ocf_ravada.virt import domxml
from ocf_ravada.virt.connection import DomainGone, Hypervisor, LibvirtFailed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- domain XML ---------------------------------------------------------------------------

@pytest.mark.parametrize("xml, reason", [
    ('<!DOCTYPE domain [<!ENTITY x "2">]><domain><name>test&x;</name></domain>', "DOCTYPE"),
    ('<!DOCTYPE domain SYSTEM "file:///etc/passwd"><domain><name>a</name></domain>', "DOCTYPE"),
    ("<domain><name>test&x;</name></domain>", "not well-formed"),
    ('<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
     '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><domain><name>&c;</name></domain>', "DOCTYPE|entity"),
    ("<domain><name>" + "x" * (domxml.MAX_BYTES + 1) + "</name></domain>", "larger than"),
])
def test_domain_xml_with_doctype_entities_or_too_large_is_refused(xml, reason):
    with pytest.raises(domxml.DomainXmlError, match=reason):
        domxml.parse(xml)


def test_passwords_in_a_definition_are_noticed():
    assert domxml.parse("<domain><name>a</name><devices><graphics type='vnc' passwd='s3cret'/>"
                        "</devices></domain>").has_secrets
    assert not domxml.parse("<domain><name>a</name></domain>").has_secrets


# -- libvirt errors are typed at the boundary ------------------------------------------------

def test_libvirt_errors_come_out_typed():
    hv = Hypervisor.connect("test:///default", Deadline(10))
    try:
        with pytest.raises(DomainGone) as gone:
            hv.call("looking up nothing", hv.conn.lookupByName, "no-such-domain")
        assert gone.value.code == libvirt.VIR_ERR_NO_DOMAIN and "looking up nothing" in gone.value.reason
        running = hv.conn.lookupByName("test")
        with pytest.raises(LibvirtFailed) as failed:
            hv.call("starting it twice", running.create)
        assert not isinstance(failed.value, libvirt.libvirtError)
        assert hv.lookup("no-such-domain") is None
    finally:
        hv.close()


# -- parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["inf", "nan", "-inf", "1e3", "1_000", "\u0663", "9" * 30, "0x10"])
def test_integer_parameters_accept_only_bounded_ascii_numbers(raw):
    param = Parameter("n", "n", "n", type="integer", default=1, minimum=0)
    with pytest.raises(OcfError) as caught:
        param.parse(raw)
    assert caught.value.rc == Rc.ERR_CONFIGURED


@pytest.mark.parametrize("suffix", ["@evil:22/x?", "-mig/../", "a b", "x#y", "%n"])
def test_migration_network_suffix_is_restricted_to_host_name_characters(suffix):
    env = Environment({"OCF_RESKEY_config": "/etc/vm.xml", "OCF_RESKEY_migration_network_suffix": suffix})
    with pytest.raises(OcfError, match="migration_network_suffix"):
        parse_all(PARAMETERS, env)


@pytest.mark.parametrize("node", ["node2@evil:22", "node2/x", "node2?a", "", "-x"])
def test_a_migration_target_that_is_not_a_host_name_never_reaches_a_uri(node):
    params = parse_all(PARAMETERS, Environment({"OCF_RESKEY_config": "/etc/vm.xml"}))
    with pytest.raises(OcfError) as caught:
        migration.remote_uri(params, "qemu:///system", node)
    assert caught.value.rc == Rc.ERR_CONFIGURED


@pytest.mark.parametrize("text", ["inf", "nan", "-1", "0", "1e400", "soon", "99999"])
def test_timeouts_must_be_finite_positive_and_bounded(text):
    with pytest.raises(ValueError, match="number of seconds"):
        parse_seconds(text, "ceph_timeout", 3600)
    assert parse_seconds("2.5", "x") == 2.5


@pytest.mark.parametrize("option", ["--ceph-timeout=inf", "--ceph-timeout=nan", "--blocklist-expire=inf"])
def test_fence_rbd_refuses_inf_and_nan_cleanly(option):
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "fence_rbd"), "-o", "status",
                           "-n", "node1", option], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "must be a number of seconds" in done.stderr


# -- state files ---------------------------------------------------------------------------

def test_state_file_through_a_symlink_is_not_trusted(tmp_path):
    directory = tmp_path / "rsc"
    directory.mkdir(mode=0o755)
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text('{"identity": {"name": "victim"}}')
    state = StateFile(str(directory), "VirtualDomain", "vm")
    os.symlink(elsewhere, state.path)
    assert state.load() == {}
    state.save({"identity": {"name": "mine"}})
    assert not os.path.islink(state.path) and elsewhere.read_text().startswith('{"identity": {"name": "victim"')


def test_state_file_of_another_user_or_writable_by_others_is_ignored(tmp_path):
    directory = tmp_path / "rsc"
    directory.mkdir(mode=0o755)
    state = StateFile(str(directory), "VirtualDomain", "vm")
    state.save({"identity": {"name": "mine"}})
    os.chmod(state.path, 0o666)
    assert StateFile(str(directory), "VirtualDomain", "vm").load() == {}
    os.chmod(state.path, 0o644)
    os.chown(state.path, 65534, 65534)
    assert StateFile(str(directory), "VirtualDomain", "vm").load() == {}


def test_state_in_a_world_writable_directory_is_refused(tmp_path):
    directory = tmp_path / "open"
    directory.mkdir()
    os.chmod(directory, 0o777)
    state = StateFile(str(directory), "VirtualDomain", "vm")
    with pytest.raises(UnsafeState) as caught:
        state.save({"x": 1})
    assert caught.value.rc == Rc.ERR_PERM
    assert state.load() == {}


def test_a_resource_name_cannot_leave_the_state_directory(tmp_path):
    state = StateFile(str(tmp_path), "VirtualDomain", "../../etc/x")
    assert os.path.dirname(state.path) == str(tmp_path)


# -- logging -------------------------------------------------------------------------------

def test_undecodable_text_with_a_log_file_does_not_raise(tmp_path):
    logfile = tmp_path / "ha.log"
    undecodable = b"vm-\xff\xfe".decode("utf-8", "surrogateescape")
    log = Log("VirtualDomain", undecodable, {"HA_LOGFILE": str(logfile), "HA_DEBUGLOG": str(logfile) + ".d"})
    log.error(f"invalid value '{undecodable}'")
    assert "\\udcff" in logfile.read_text() or "\\xff" in logfile.read_text()


def test_a_fifo_as_log_file_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    Log("VirtualDomain", "vm", {"HA_LOGFILE": str(fifo)}).info("hello")
    assert time.monotonic() - started < 2


# -- host shutdown ordering under parallel starts --------------------------------------------

def _start_many(root: str, variant: int, calls: int, errors) -> None:
    hostorder.CONTENT = f"{hostorder.CONTENT}# {variant}\n"   # never "already there": always write
    log = Log("VirtualDomain", "t", {}, io.StringIO())
    for _ in range(calls):
        try:
            hostorder.ensure(Deadline(10), log, root, lambda argv, _t: None)
        except Exception as err:  # what a start would have died of
            errors.put(repr(err))
            return


def test_parallel_starts_install_the_drop_in_without_errors(tmp_path):
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    errors = multiprocessing.get_context("fork").Queue()
    workers = [multiprocessing.get_context("fork").Process(target=_start_many, args=(str(tmp_path), i, 150, errors))
               for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert errors.empty(), errors.get()
    drop_in = tmp_path / hostorder.DROP_IN
    assert drop_in.read_text().startswith(hostorder.CONTENT)
    assert stat.S_IMODE(drop_in.stat().st_mode) == 0o644
    assert [p.name for p in drop_in.parent.iterdir()] == [drop_in.name]


# -- Pacemaker reached through one module: hung or failing tools never escape ------------------

def _hung_tools(tmp_path, *names):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name in names:
        tool = bindir / name
        tool.write_text("#!/bin/sh\nexec sleep 60\n")
        tool.chmod(0o755)
    return f"{bindir}:/usr/bin:/bin"


def test_node_map_from_a_hung_cibadmin_is_empty_and_in_time(tmp_path, monkeypatch):
    from ocf_ravada.rbd.nodes import NodeMap, pacemaker_fenced

    monkeypatch.setenv("PATH", _hung_tools(tmp_path, "cibadmin", "stonith_admin", "crm_mon"))
    started = time.monotonic()
    warnings = []
    assert NodeMap.from_cib(timeout=1.0, warn=warnings.append).ips_by_node == {}
    assert len(warnings) == 1 and "did not answer" in warnings[0]
    assert pacemaker_fenced("node2", timeout=1.0) is None
    assert time.monotonic() - started < 5


def test_node_map_uses_pacemakers_precedence_transient_wins():
    from ocf_ravada.rbd.nodes import NodeMap

    cib = """<cib><configuration><nodes>
      <node id="1" uname="node1"><instance_attributes id="n1">
        <nvpair id="n1-a" name="ravada-ceph-addrs" value="10.0.0.11"/></instance_attributes></node>
    </nodes></configuration><status>
      <node_state id="1" uname="node1"><transient_attributes id="1"><instance_attributes id="s1">
        <nvpair id="s1-a" name="ravada-ceph-addrs" value="10.0.9.11"/></instance_attributes>
      </transient_attributes></node_state></status></cib>"""
    assert NodeMap.from_cib_xml(cib).ips_of("node1") == ("10.0.9.11",)


def test_node_map_refuses_a_cib_with_entities():
    from ocf_ravada.rbd.errors import RbdError
    from ocf_ravada.rbd.nodes import NodeMap

    with pytest.raises(RbdError, match="DOCTYPE"):
        NodeMap.from_cib_xml('<!DOCTYPE cib [<!ENTITY ip "10.0.0.1">]><cib><configuration><nodes>'
                             '<node id="1" uname="n"><instance_attributes id="a"><nvpair id="b" '
                             'name="ravada-ceph-addrs" value="&ip;"/></instance_attributes></node>'
                             '</nodes></configuration></cib>')


def test_nodeinfo_monitor_with_a_hung_cib_warns_and_succeeds_in_time(tmp_path):
    bindir_path = _hung_tools(tmp_path, "crm_attribute")
    env = {"PATH": bindir_path, "OCF_RESOURCE_INSTANCE": "ni", "HA_RSCTMP": str(tmp_path / "rsc"),
           "OCF_RESKEY_hypervisor": "test:///default", "OCF_RESKEY_storage_paths": str(tmp_path),
           "OCF_RESKEY_crm_feature_set": "3.16.1", "OCF_RESKEY_CRM_meta_timeout": "4000"}
    agent = os.path.join(REPO, "agents", "nodeinfo")
    started = time.monotonic()
    done = subprocess.run([sys.executable, agent, "start"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "not published" in done.stderr and "did not answer" in done.stderr
    assert time.monotonic() - started < 8


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_ravada_rbd_refuses_inf_and_nan_timeouts(value):
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "ravada-rbd"), "--timeout", value,
                           "whoami"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "must be a number of seconds" in done.stderr


def test_monitor_script_with_binary_output_fails_with_a_reason(tmp_path):
    from ocf_ravada.vdomain import checks

    script = tmp_path / "check"
    script.write_text("#!/bin/sh\nprintf 'bad \\377\\376 state\\n'; exit 3\n")
    script.chmod(0o755)
    with pytest.raises(OcfError, match="failed with exit 3: bad"):
        checks.run_scripts(str(script), "vm", 5, Deadline(10))
    not_a_program = tmp_path / "data"
    not_a_program.write_bytes(b"\x7fELF-not-really")
    not_a_program.chmod(0o755)
    with pytest.raises(OcfError, match="cannot be run"):
        checks.run_scripts(str(not_a_program), "vm", 5, Deadline(10))


@pytest.mark.parametrize("raw", ["-5", "0", "inf"])
def test_a_nonsense_operation_timeout_falls_back_to_the_default(raw):
    assert Environment({"OCF_RESKEY_CRM_meta_timeout": raw}).timeout_ms is None


@pytest.mark.parametrize("reply, ok", [('{"return": {}}', True), ("not json", False), ("[1]", False),
                                       ("5", False), ("[" * 100000, False), (None, False)])
def test_guest_agent_replies_are_untrusted(reply, ok):
    from ocf_ravada.vdomain import checks

    assert checks.ping_answered(reply) is ok


@pytest.mark.parametrize("param, value", [
    ("cpu_ratio", "inf"), ("cpu_ratio", "nan"), ("cpu_ratio", "1e400"), ("reserve_cpus", "1_0"),
    ("reserve_memory", "9" * 40), ("storage_full_percent", "nan"), ("change_threshold", "\u0663"),
    ("storage_paths", "/dev/zero /proc/self/fd/0"), ("storage_paths", "relative"),
    ("hypervisor", b"\xff".decode("utf-8", "surrogateescape")), ("storage_pools", "perhaps"),
])
def test_nodeinfo_over_hostile_parameters_ends_cleanly(tmp_path, param, value):
    agent = os.path.join(REPO, "agents", "nodeinfo")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OCF_RESOURCE_INSTANCE": "ni",
           "HA_RSCTMP": str(tmp_path / "rsc"), "HA_LOGFILE": str(tmp_path / "ha.log"),
           "OCF_RESKEY_hypervisor": "test:///default", "OCF_RESKEY_CRM_meta_timeout": "8000",
           f"OCF_RESKEY_{param}": value}
    encoded = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in env.items()}
    for action in ("validate-all", "start", "monitor", "stop"):
        done = subprocess.run([sys.executable, agent, action], env=encoded, capture_output=True, timeout=15)
        err = done.stderr.decode("utf-8", "replace")
        assert done.returncode in {0, 1, 2, 3, 4, 5, 6, 7}, err
        assert "Traceback" not in err and "internal error" not in err
        reasons = [line for line in err.splitlines() if line.startswith("ocf-exit-reason:")]
        assert len(reasons) == (0 if done.returncode in (0, 7) else 1), (action, err)
