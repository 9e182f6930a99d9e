"""Pure parts of ravada-snapshot / ravada-backup: snapshot names, the guest agent's channel state
in domain XML, where crm_mon says a resource runs, command-line refusals."""
from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone

import pytest
from lxml import etree

from ocf_ravada import pacemaker
from ocf_ravada.rbd.snapshot import snapshot_name, taken_at
from ocf_ravada.virt.guestagent import Agent, agent_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_snapshot_names_carry_the_utc_time_and_only_ours_parse():
    when = datetime(2026, 11, 30, 23, 59, 58, tzinfo=timezone.utc)
    assert snapshot_name(when) == "ravada-20261130T235958Z"
    assert taken_at("ravada-20261130T235958Z") == when
    for other in ("ravada-2026", "backup-20261130T235958Z", "ravada-20261130T235958Z.x", ""):
        assert taken_at(other) is None


@pytest.mark.parametrize("channel, expected", [
    ("", Agent.ABSENT),
    ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>",
     Agent.CONNECTED),
    ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/></channel>",
     Agent.DISCONNECTED),
    ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>", Agent.DISCONNECTED),
    ("<channel type='unix'><target type='virtio' name='com.redhat.spice.0' state='connected'/></channel>",
     Agent.ABSENT),
])
def test_agent_state_from_the_live_domain_xml(channel, expected):
    assert agent_state(f"<domain><name>v</name><devices>{channel}</devices></domain>") is expected


CRM_MON = """<pacemaker-result api-version="2.3" request="crm_mon">
  <resources>
    <resource id="vm1" resource_agent="ocf:ravada:VirtualDomain" role="Started" active="true" nodes_running_on="1">
      <node name="node-b" id="2" cached="true"/>
    </resource>
    <resource id="vm2" resource_agent="ocf:ravada:VirtualDomain" role="Stopped" active="false" nodes_running_on="0"/>
    <group id="g" number_resources="1">
      <resource id="vm3" resource_agent="ocf:ravada:VirtualDomain" role="Started" active="true" nodes_running_on="1">
        <node name="node-c" id="3" cached="true"/>
      </resource>
    </group>
  </resources>
</pacemaker-result>"""


def test_resource_nodes_from_crm_mon_xml():
    status = etree.fromstring(CRM_MON)
    assert pacemaker.resource_nodes(status, "vm1") == ["node-b"]
    assert pacemaker.resource_nodes(status, "vm2") == []
    assert pacemaker.resource_nodes(status, "vm3") == ["node-c"]
    assert pacemaker.resource_nodes(status, "nope") == []


@pytest.mark.parametrize("tool, argv", [
    ("ravada-snapshot", ["create"]),
    ("ravada-snapshot", ["--timeout", "inf", "create", "vm"]),
    ("ravada-snapshot", ["create", "--keep", "0", "vm"]),
    ("ravada-snapshot", ["frobnicate", "vm"]),
])
def test_bad_usage_exits_2_with_one_message(tool, argv):
    done = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "tools", tool), *argv],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert done.stdout == "" and done.stderr.strip()


def test_a_bad_disk_spec_is_a_usage_error():
    done = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "tools", "ravada-snapshot"),
                           "--uri", "test:///default", "--disk", "no-pool-here", "list", "test"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "POOL/IMAGE" in done.stderr, done
