"""`ravada-lab down` (and an interrupted `up`) leave no process, namespace, link or mount."""

import signal
import subprocess
import time
from pathlib import Path

import pytest

from ravada_lab import procs
from ravada_lab.layout import BRIDGE, LabLayout
from ravada_lab.state import LabState

from lab_support import RAVADA_LAB, SESSION, run_cli

pytestmark = pytest.mark.lab


def lab_links_on_host() -> list[str]:
    """Links with the lab's names in the host's namespace (the lab must never make any)."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    names = [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]
    return [n for n in names if n == BRIDGE or n.startswith(("p-node", "p-remote"))]


def mounts_under(root: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(str(root))]


def processes_mentioning(root: Path) -> list[int]:
    """Live processes whose command line names the lab directory (holders, controller)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and procs.alive(int(entry.name)):
            try:
                if str(root).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def clean_host(installed):
    """No lab link on the host before or after (other engineers' links are theirs)."""
    assert lab_links_on_host() == []
    yield
    assert lab_links_on_host() == []


def test_down_leaves_nothing_behind(clean_host):
    name = f"e2e-{SESSION}-d"
    layout = LabLayout.for_lab(name)
    run_cli("down", "--name", name, check=False)
    # Shaped links, sshd and a remote node too: their qdiscs and daemons go with the lab.
    run_cli("up", "--nodes", "2", "--remote-nodes", "1", "--name", name,
            "--link-rate", "200mbit")
    try:
        again = run_cli("up", "--nodes", "2", "--name", name, check=False)
        assert again.returncode == 1 and "already up" in again.stderr
        assert "Traceback" not in again.stderr
        recorded = LabState.load(layout).data
        assert recorded["link_rate"] == "200mbit"
        assert all("sshd" in info["daemons"] for info in recorded["nodes"].values())
        assert "pacemaker-remoted" in recorded["nodes"]["remote1"]["daemons"]
    finally:
        down = run_cli("down", "--name", name, check=False)
    assert down.returncode == 0, down.stderr
    switch = procs.NamespaceIds(recorded["switch_netns"], -1)
    assert procs.members(switch) == [], "processes left in the lab switch's namespace"
    pids = [recorded["controller"]]
    for info in recorded["nodes"].values():
        pids += [info["holder"], info["launcher"], *info["daemons"].values()]
        ns = procs.NamespaceIds(info["netns"], info["pidns"])
        assert procs.members(ns) == [], f"processes left in the namespaces of a node: {info}"
    assert [p for p in pids if procs.alive(p)] == []
    assert not layout.root.exists()
    assert mounts_under(layout.root) == []
    assert processes_mentioning(layout.root) == []
    nothing = run_cli("down", "--name", name, check=False)
    assert nothing.returncode == 0 and "not up" in nothing.stderr
    status = run_cli("status", "--name", name, check=False)
    assert status.returncode == 3 and "not up" in status.stderr


def test_interrupted_up_cleans_up(clean_host):
    name = f"e2e-{SESSION}-i"
    layout = LabLayout.for_lab(name)
    # SIGINT at its default: a test session started in the background inherits it ignored.
    up = subprocess.Popen(RAVADA_LAB + ["up", "--nodes", "2", "--name", name],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Interrupt once the nodes run, while the cluster forms: the worst moment to leave.
        deadline = time.monotonic() + 60
        while not (layout.state_file.exists() and LabState.load(layout).powered_nodes()):
            assert up.poll() is None and time.monotonic() < deadline, "up never booted nodes"
            time.sleep(0.05)
        up.send_signal(signal.SIGINT)
        _out, err = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
        run_cli("down", "--name", name, check=False)
    assert up.returncode == 130, err
    assert "Traceback" not in err
    assert not layout.root.exists()
    assert processes_mentioning(layout.root) == []
