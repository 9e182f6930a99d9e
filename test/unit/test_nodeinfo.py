"""ocf:ravada:nodeinfo without daemons: what it publishes, when it writes, its OCF contract."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from lxml import etree

AGENT = Path(__file__).resolve().parents[2] / "agents" / "nodeinfo"
NO_LIBVIRT = "qemu:///system?socket=/nonexistent/libvirt-sock"


from ocf_ravada import nodeinfo  # noqa: E402

DEFAULTS = {p.name: p.default for p in nodeinfo.PARAMETERS}


def measurement(**changes):
    base = dict(cpus=8, memory_total_mib=32768, memory_available_mib=20000,
                storage={"/var/lib/libvirt/images": nodeinfo.Storage(50000, 100000)},
                domains=3, domain_vcpus=6, domain_memory_mib=6144)
    return nodeinfo.Measurement(**(base | changes))


def test_utilization_applies_ratio_and_host_reserves():
    params = DEFAULTS | {"cpu_ratio": "4", "reserve_cpus": 2, "reserve_memory": 4096}
    utilization, attributes = nodeinfo.publishable(measurement(), params)
    assert utilization == {"cpu": 30, "hv_memory": 28672, "host_memory": 28672}
    assert attributes == {"ravada-cpus": 8, "ravada-memory-total": 32768, "ravada-memory-free": 20000,
                          "ravada-vms": 3, "ravada-vms-vcpus": 6, "ravada-vms-memory": 6144,
                          "ravada-storage-free": 50000, "ravada-storage-full": 0}


def test_pacemaker_starts_a_vm_sized_by_our_vm_agent_on_a_node_sized_by_nodeinfo(tmp_path):
    """Every utilization attribute VirtualDomain sets on a VM by default must be one nodeinfo
    publishes: Pacemaker takes a missing node attribute as no capacity (a VM whose
    host_memory no node offered could run nowhere).  Checked with Pacemaker's scheduler."""
    from ocf_ravada.vdomain import utilization as vm_utilization
    from ocf_ravada.vdomain.parameters import PARAMETERS as VM_PARAMETERS
    from support.stack import require_stack
    require_stack("Pacemaker's scheduler", "crm_simulate")
    node_util, _ = nodeinfo.publishable(measurement(), DEFAULTS)
    vm_defaults = {p.name: p.default for p in VM_PARAMETERS}
    vm_util = vm_utilization.wanted(vm_defaults, 2, 2048 * 1024)
    assert set(vm_util) <= set(node_util)
    nvpairs = lambda owner, values: "".join(  # noqa: E731
        f'<nvpair id="{owner}-{k}" name="{k}" value="{v}"/>' for k, v in values.items())
    cib = tmp_path / "cib.xml"
    cib.write_text(
        '<cib validate-with="pacemaker-3.0" epoch="1" num_updates="0" admin_epoch="0" have-quorum="1">'
        '<configuration><crm_config><cluster_property_set id="o">'
        '<nvpair id="o1" name="stonith-enabled" value="false"/>'
        '<nvpair id="o2" name="placement-strategy" value="utilization"/></cluster_property_set></crm_config>'
        f'<nodes><node id="1" uname="n1"><utilization id="n1-u">{nvpairs("n1", node_util)}</utilization></node></nodes>'
        '<resources><primitive id="vm1" class="ocf" provider="pacemaker" type="Dummy">'
        f'<utilization id="vm1-u">{nvpairs("vm1", vm_util)}</utilization></primitive></resources>'
        '<constraints/></configuration></cib>')
    out = subprocess.run(["crm_simulate", "--xml-file", str(cib), "--node-up", "n1", "--simulate"],
                         capture_output=True, text=True, timeout=60).stdout
    assert "vm1\t(ocf:pacemaker:Dummy):\t Started n1" in out.split("Revised Cluster Status")[1], out


def test_reserves_larger_than_the_node_publish_zero_not_negative():
    utilization, _ = nodeinfo.publishable(measurement(), DEFAULTS | {"reserve_cpus": 99, "reserve_memory": 99999})
    assert utilization == {"cpu": 0, "hv_memory": 0, "host_memory": 0}


@pytest.mark.parametrize("storage, free, full", [
    ({"/a": nodeinfo.Storage(5000, 100000)}, 5000, 1),                     # 95 % used
    ({"/a": nodeinfo.Storage(10000, 100000)}, 10000, 1),                   # exactly 90 %
    ({"/a": nodeinfo.Storage(50000, 100000), "pool:x": nodeinfo.Storage(900, 1000)}, 900, 0),
    ({"/a": nodeinfo.Storage(50000, 100000), "/gone": None}, 50000, 1),    # unreadable = full
])
def test_storage_free_is_the_smallest_and_full_flags_any_nearly_full_store(storage, free, full):
    _, attributes = nodeinfo.publishable(measurement(storage=storage), DEFAULTS)
    assert attributes["ravada-storage-free"] == free and attributes["ravada-storage-full"] == full


def test_without_libvirt_no_domain_figures_are_published():
    _, attributes = nodeinfo.publishable(measurement(domains=None, domain_vcpus=None, domain_memory_mib=None),
                                         DEFAULTS)
    assert not any(name.startswith("ravada-vms") for name in attributes)


@pytest.mark.parametrize("name, old, new, write", [
    ("ravada-memory-free", None, 100, True),
    ("ravada-memory-free", 1000, 1040, False),     # 4 % < 5 %
    ("ravada-memory-free", 1000, 1060, True),
    ("ravada-memory-free", 1000, 940, True),
    ("ravada-memory-free", 0, 0, False),
    ("ravada-memory-free", 0, 1, True),
    ("ravada-vms", 100, 101, True),                # counts: any change
    ("ravada-storage-full", 0, 0, False),
    ("cpu", 64, 65, True),
])
def test_a_value_is_written_only_when_it_moved_enough(name, old, new, write):
    assert nodeinfo.worth_writing(name, old, new, 5) is write


def run_agent(action: str, tmp_path: Path, **params: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HA_RSCTMP": str(tmp_path),
           "OCF_RESOURCE_INSTANCE": "nodeinfo:0", "OCF_RESKEY_hypervisor": NO_LIBVIRT,
           "OCF_RESKEY_storage_paths": str(tmp_path)}
    for key, value in params.items():
        env[("OCF_RESKEY_CRM_meta_" + key[5:]) if key.startswith("meta_") else "OCF_RESKEY_" + key] = value
    return subprocess.run(["/usr/bin/python3", str(AGENT), action], env=env, capture_output=True, text=True,
                          timeout=60)


def test_probe_start_monitor_stop_without_a_cluster(tmp_path):
    assert run_agent("monitor", tmp_path, meta_interval="0").returncode == 7
    started = run_agent("start", tmp_path)
    assert started.returncode == 0, started.stderr
    assert "would publish" in started.stderr          # no cluster: measures, writes nothing
    assert run_agent("monitor", tmp_path, meta_interval="0").returncode == 0
    assert run_agent("monitor", tmp_path, meta_interval="60000").returncode == 0
    assert run_agent("stop", tmp_path).returncode == 0
    assert run_agent("monitor", tmp_path, meta_interval="60000").returncode == 7
    assert run_agent("stop", tmp_path).returncode == 0


@pytest.mark.parametrize("param, value", [("cpu_ratio", "abc"), ("cpu_ratio", "0"), ("reserve_memory", "-1"),
                                          ("storage_paths", "relative/dir"), ("change_threshold", "101")])
def test_bad_parameters_are_err_configured_with_a_reason(tmp_path, param, value):
    proc = run_agent("start", tmp_path, **{param: value})
    assert proc.returncode == 6
    assert f"ocf-exit-reason:invalid value '{value}' for parameter '{param}'" in proc.stderr


def test_a_probe_with_bad_parameters_still_answers(tmp_path):
    assert run_agent("monitor", tmp_path, meta_interval="0", cpu_ratio="abc").returncode == 7


def test_metadata_is_ocf_1_1():
    # Debian 12's resource-agents metadata.rng predates OCF 1.1 (no reloadable=), so the
    # structure is checked here rather than against that schema.
    proc = subprocess.run(["/usr/bin/python3", str(AGENT), "meta-data"], capture_output=True, timeout=30)
    assert proc.returncode == 0
    root = etree.fromstring(proc.stdout)
    assert all(p.find("content") is not None and p.find("shortdesc") is not None for p in root.iter("parameter"))
    assert root.get("name") == "nodeinfo" and root.findtext("version") == "1.1"
    assert {a.get("name") for a in root.iter("action")} >= {"start", "stop", "monitor", "meta-data",
                                                             "validate-all"}
    assert {p.get("name") for p in root.iter("parameter")} == set(DEFAULTS)


def test_unknown_action_is_unimplemented(tmp_path):
    assert run_agent("promote", tmp_path).returncode == 3
