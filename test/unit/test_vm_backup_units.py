"""Pure parts of ravada-snapshot / ravada-backup: snapshot names, the guest agent's channel state
in domain XML, where crm_mon says a resource runs, command-line refusals."""
from __future__ import annotations

import hashlib
import json
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
    ("ravada-backup", ["export", "vm"]),
    ("ravada-backup", ["restore", "/tmp"]),
    ("ravada-backup", ["export", "vm", "--to", "/tmp", "--keep-snapshots", "x"]),
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


# -- backup manifests: read from a backup medium, so untrusted ----------------------------------

from pathlib import Path  # noqa: E402

from ocf_ravada.rbd import backup  # noqa: E402

GOOD = {"format": "ravada-backup 1", "vm": "vm1", "snapshot": "ravada-20261130T235958Z",
        "created": "2026-11-30T23:59:59Z", "consistency": "file systems frozen", "base": None,
        "images": [{"image": "vmpool/vm1", "size": 1 << 30, "from_snapshot": None,
                    "file": "disk0-vm1.full.rbd-diff", "bytes": 3, "sha256": "0" * 64}]}


def manifest_with(**changes) -> str:
    doc = json.loads(json.dumps(GOOD))
    image = changes.pop("image", {})
    doc["images"][0].update(image)
    doc.update(changes)
    return json.dumps(doc)


def test_a_good_manifest_round_trips():
    parsed = backup.Manifest.parse(json.dumps(GOOD), "m")
    assert backup.Manifest.parse(parsed.to_json(), "m") == parsed
    assert parsed.entry("vmpool/vm1").bytes == 3


@pytest.mark.parametrize("text", [
    "not json", "[]", json.dumps({**GOOD, "format": "other"}), manifest_with(images=[]),
    manifest_with(image={"file": "../escape"}), manifest_with(image={"file": "manifest.json"}),
    manifest_with(image={"file": "/abs"}), manifest_with(image={"sha256": "xyz"}),
    manifest_with(image={"bytes": -1}), manifest_with(image={"bytes": True}),
    manifest_with(image={"size": "12"}), manifest_with(image={"image": "no-pool"}),
    manifest_with(base="../other"), manifest_with(vm=""),
])
def test_bad_manifests_are_refused(text):
    with pytest.raises(backup.BackupInvalid):
        backup.Manifest.parse(text, "m")


def write_backup(directory: Path, content: bytes, **changes) -> None:
    directory.mkdir()
    (directory / "disk0-vm1.full.rbd-diff").write_bytes(content)
    image = {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(), **changes.pop("image", {})}
    (directory / "manifest.json").write_text(manifest_with(image=image, **changes))


def test_verify_checks_size_and_hash_and_the_chain(tmp_path):
    write_backup(tmp_path / "ravada-20261130T000000Z", b"abc", snapshot="ravada-20261130T000000Z")
    write_backup(tmp_path / "ravada-20261201T000000Z", b"def", snapshot="ravada-20261201T000000Z",
                 base="ravada-20261130T000000Z",
                 image={"from_snapshot": "ravada-20261130T000000Z"})
    chain = backup.verify(tmp_path / "ravada-20261201T000000Z")
    assert [p.name for p, _ in chain] == ["ravada-20261130T000000Z", "ravada-20261201T000000Z"]
    assert [e.from_snapshot for _, e in backup.restore_plan(chain, "vmpool/vm1")] == \
        [None, "ravada-20261130T000000Z"]
    (tmp_path / "ravada-20261130T000000Z" / "disk0-vm1.full.rbd-diff").write_bytes(b"abd")
    with pytest.raises(backup.BackupInvalid, match="altered"):
        backup.verify(tmp_path / "ravada-20261201T000000Z")


def test_an_incremental_whose_base_is_of_another_snapshot_is_refused(tmp_path):
    write_backup(tmp_path / "a", b"abc", snapshot="ravada-20261130T000000Z")
    write_backup(tmp_path / "b", b"def", snapshot="ravada-20261201T000000Z", base="a",
                 image={"from_snapshot": "ravada-20261129T000000Z"})
    with pytest.raises(backup.BackupInvalid, match="continues from"):
        backup.chain_of(tmp_path / "b")


def test_a_stream_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    write_backup(tmp_path / "a", b"abc")
    stream = tmp_path / "a" / "disk0-vm1.full.rbd-diff"
    stream.unlink()
    os.mkfifo(stream)
    with pytest.raises(backup.BackupInvalid, match="not a regular file"):
        backup.verify(tmp_path / "a")
