"""fence_rbd and ravada-rbd as admins and Pacemaker's fencer run them, against the real cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lxml import etree

from ravada_lab.microceph import ROOT_NODE
from node_agent import record_of
from ocf_ravada.rbd import NodeMap

pytestmark = pytest.mark.ceph

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def tool(name: str, *args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / name), *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def fence_args(ceph, user: str = "admin") -> list[str]:
    keyring = ceph.admin_keyring if user == "admin" else ceph.keyring(user)
    return ["--ceph-conf", str(ceph.conf), "--ceph-id", user, "--keyring", str(keyring),
            "--node-addrs", ceph.node_map_text()]


def rbd_args(ceph) -> list[str]:
    return ["--conf", str(ceph.conf), "--id", "admin", "--keyring", str(ceph.admin_keyring),
            "--node-addrs", ceph.node_map_text()]


@pytest.fixture
def unfence_d(ceph):
    yield
    tool("fence_rbd", "-o", "on", "-n", "node-d", *fence_args(ceph))


def test_fence_rbd_metadata_is_fence_agent_xml():
    proc = tool("fence_rbd", "-o", "metadata")
    assert proc.returncode == 0
    root = etree.fromstring(proc.stdout.encode())
    assert root.tag == "resource-agent" and root.get("name") == "fence_rbd"
    params = {p.get("name") for p in root.iterfind("parameters/parameter")}
    assert {"action", "plug", "port", "ceph_conf", "ceph_id", "keyring", "node_addrs"} <= params
    actions = {a.get("name"): a.attrib for a in root.iterfind("actions/action")}
    assert {"on", "off", "status", "list", "monitor", "metadata"} <= set(actions)
    assert actions["on"].get("automatic") == "1"


def test_fence_rbd_off_cuts_the_node_off_and_on_lets_it_back(ceph, qemu, image, unfence_d):
    name = image.split("/")[1]
    vm_d = qemu("node-d", image)
    assert vm_d.write(0xDD).startswith("wrote")
    assert tool("fence_rbd", "-o", "status", "-n", "node-d", *fence_args(ceph)).returncode == 0

    # as Pacemaker's fencer runs it: no arguments, key=value on stdin, port names the node,
    # with a cephx user that has only 'profile rbd'
    stdin = "\n".join(["action=off", "port=node-d", "nodename=node-r", f"ceph_conf={ceph.conf}",
                       "ceph_id=node", f"keyring={ceph.keyring('node')}",
                       f"node_addrs={ceph.node_map_text()}", ""])
    off = tool("fence_rbd", stdin=stdin)
    assert off.returncode == 0, off.stderr
    assert f"{ceph.nodes['node-d'].ip}:0/0" in [e["addr"] for e in ceph.blocklist()]
    assert ceph.image_state(name)["watchers"] == []                 # its watch is gone at once
    late = vm_d.write(0xDE)
    assert "failed" in late and "shutdown" in late.lower(), late
    assert ceph.read(name, 0, 4) == b"\xdd" * 4
    status = tool("fence_rbd", "-o", "status", "-n", "node-d", *fence_args(ceph))
    assert status.returncode == 2 and "OFF" in status.stdout

    # 'profile rbd' may not remove blocklist entries: a clear failure, the fence stays
    denied = tool("fence_rbd", "-o", "on", "-n", "node-d", *fence_args(ceph, "node"))
    assert denied.returncode == 1 and "may not" in denied.stderr
    assert tool("fence_rbd", "-o", "status", "-n", "node-d", *fence_args(ceph)).returncode == 2

    on = tool("fence_rbd", "-o", "on", "-n", "node-d", *fence_args(ceph))
    assert on.returncode == 0, on.stderr
    assert tool("fence_rbd", "-o", "status", "-n", "node-d", *fence_args(ceph)).returncode == 0
    vm_d.kill()
    again = qemu("node-d", image)                                    # a new client works again
    assert again.write(0xDF).startswith("wrote")


def test_fence_rbd_refuses_unknown_nodes_and_its_own_address(ceph):
    before = ceph.blocklist()
    unknown = tool("fence_rbd", "-o", "off", "-n", "node-zz", *fence_args(ceph))
    assert unknown.returncode == 1 and "no Ceph client IPs known" in unknown.stderr
    itself = tool("fence_rbd", "-o", "off", "-n", ROOT_NODE, *fence_args(ceph))
    assert itself.returncode == 1 and "own address" in itself.stderr
    assert ceph.blocklist() == before


def test_fence_rbd_list_and_monitor(ceph, tmp_path):
    listed = tool("fence_rbd", "-o", "list", *fence_args(ceph))
    assert listed.returncode == 0 and "node-a," in listed.stdout.splitlines()
    assert tool("fence_rbd", "-o", "monitor", *fence_args(ceph)).returncode == 0
    dead = tmp_path / "dead.conf"
    dead.write_text("[global]\nmon host = 127.0.0.1:1\n")
    down = tool("fence_rbd", "-o", "monitor", "--ceph-conf", str(dead), "--keyring", str(ceph.admin_keyring),
                "--ceph-timeout", "2")
    assert down.returncode == 1 and "not reachable" in down.stderr


def test_ravada_rbd_status_names_nodes(ceph, qemu, image):
    vm_a = qemu("node-a", image)
    assert vm_a.write(0xAA).startswith("wrote")
    text = tool("ravada-rbd", *rbd_args(ceph), "status", image)
    assert text.returncode == 0 and "in use" in text.stdout and "node-a" in text.stdout
    info = json.loads(tool("ravada-rbd", *rbd_args(ceph), "--json", "status", image).stdout)
    assert info["watchers"][0]["node"] == "node-a" and info["watchers"][0]["addr"] == vm_a.addr
    assert info["lock"]["holders"][0]["live"] is True


def test_ravada_rbd_release_refuses_while_watched_and_releases_stale(ceph, qemu, image):
    name = image.split("/")[1]
    vm_a = qemu("node-a", image)
    assert vm_a.write(0xAA).startswith("wrote")
    before = ceph.image_state(name)
    refused = tool("ravada-rbd", *rbd_args(ceph), "release", image)
    assert refused.returncode == 1 and "node-a" in refused.stdout
    not_fenced = tool("ravada-rbd", *rbd_args(ceph), "release", "--force-after-fence", image)
    assert not_fenced.returncode == 1 and "not confirmed fenced" in not_fenced.stderr
    assert ceph.image_state(name) == before

    vm_a.kill()
    ceph.mon_command(prefix="osd blocklist", blocklistop="add", addr=vm_a.addr, expire=600.0)
    dry = tool("ravada-rbd", *rbd_args(ceph), "release", "--dry-run", image)
    assert dry.returncode == 0 and dry.stdout.startswith("would")
    assert ceph.image_state(name)["lockers"] == before["lockers"]
    done = tool("ravada-rbd", *rbd_args(ceph), "release", image)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ceph.image_state(name) == {"watchers": [], "lockers": []}


def test_ravada_rbd_release_after_fence_cuts_off_a_hung_owner(ceph, qemu, image, unfence_d):
    name = image.split("/")[1]
    vm_d = qemu("node-d", image)
    assert vm_d.write(0xDD).startswith("wrote")
    vm_d.stop()
    assert tool("fence_rbd", "-o", "off", "-n", "node-d", *fence_args(ceph)).returncode == 0
    released = tool("ravada-rbd", *rbd_args(ceph), "release", "--force-after-fence", image)
    assert released.returncode == 0, released.stdout + released.stderr
    assert ceph.image_state(name) == {"watchers": [], "lockers": []}


def test_ravada_rbd_whoami_and_publish_to_a_cib(ceph, tmp_path, monkeypatch):
    who = tool("ravada-rbd", *rbd_args(ceph), "whoami")
    assert who.returncode == 0 and who.stdout.split() == [ceph.nodes[ROOT_NODE].ip]
    # a real CIB file, edited by Pacemaker's own crm_attribute (no cluster daemons needed)
    cib = tmp_path / "cib.xml"
    root = etree.fromstring(subprocess.run(["cibadmin", "--empty"], capture_output=True, check=True).stdout)
    etree.SubElement(root.find("configuration/nodes"), "node", id="1", uname=ROOT_NODE)
    cib.write_bytes(etree.tostring(root))
    env = {"CIB_file": str(cib)}
    args = ["--conf", str(ceph.conf), "--id", "admin", "--keyring", str(ceph.admin_keyring)]
    published = tool("ravada-rbd", *args, "publish", "--node", ROOT_NODE, env=env)
    assert published.returncode == 0, published.stderr
    monkeypatch.setenv("CIB_file", str(cib))
    assert NodeMap.from_cib().ips_of(ROOT_NODE) == (ceph.nodes[ROOT_NODE].ip,)


def test_fence_user_caps_from_the_docs_are_enough_for_off_status_on(ceph, unfence_d):
    """doc/rbd.md tells admins to give fence_rbd's user exactly these caps."""
    ceph.make_user("fencer", ["mon", 'allow r, allow command "osd blocklist"'])
    args = ["--ceph-conf", str(ceph.conf), "--ceph-id", "fencer", "--keyring", str(ceph.keyring("fencer")),
            "--node-addrs", ceph.node_map_text(), "-n", "node-d"]
    for action, rc in (("off", 0), ("status", 2), ("on", 0), ("status", 0), ("monitor", 0)):
        proc = tool("fence_rbd", "-o", action, *args)
        assert proc.returncode == rc, (action, proc.stdout, proc.stderr)


def test_fence_rbd_takes_ips_as_plug_like_pcmk_host_map_gives_them(ceph, unfence_d):
    ip = ceph.nodes["node-d"].ip
    args = ["--ceph-conf", str(ceph.conf), "--keyring", str(ceph.admin_keyring)]
    stdin = f"action=off\nplug={ip}\nceph_conf={ceph.conf}\nkeyring={ceph.admin_keyring}\n"
    assert tool("fence_rbd", stdin=stdin).returncode == 0
    assert tool("fence_rbd", "-o", "status", "-n", ip, *args).returncode == 2
    assert tool("fence_rbd", "-o", "status", "-n", "node-d", *fence_args(ceph)).returncode == 2


def test_ravada_rbd_shows_the_owner_record_and_release_fences_and_clears_it(ceph, agents, admin, image):
    vm_a = agents("node-a", image)                   # the agent's start: recorded, never written
    qemu_a = record_of(admin, image).owner.addrs[0]
    info = json.loads(tool("ravada-rbd", *rbd_args(ceph), "--json", "status", image).stdout)
    assert info["owner_record"]["owner"]["node"] == "node-a" and info["owner_record"]["owner"]["addrs"] == [qemu_a]
    vm_a.freeze()
    refused = tool("ravada-rbd", *rbd_args(ceph), "release", image)
    assert refused.returncode == 1 and "node-a" in refused.stdout       # still watched
    vm_a.crash()                                    # the watch lingers 10 s, then nothing names it
    time.sleep(ceph.watch_timeout + 2)
    text = tool("ravada-rbd", *rbd_args(ceph), "status", image)
    assert "an owner is recorded" in text.stdout and qemu_a in text.stdout, text.stdout
    done = tool("ravada-rbd", *rbd_args(ceph), "release", image)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"blocklist {qemu_a}" in done.stdout and "clear owner record" in done.stdout
    assert any(entry["addr"] == qemu_a for entry in ceph.blocklist())
    assert record_of(admin, image).empty
