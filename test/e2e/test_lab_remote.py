"""pacemaker_remote nodes in the lab: connected without corosync, running a VM, fenced by
the lab's fence agent when killed, and back online after their reboot."""

import time

import pytest

from ravada_lab import vms
from ravada_lab.domains import write_domain

from lab_support import SESSION, running_lab

pytestmark = pytest.mark.lab

REMOTES = ["remote1", "remote2"]


@pytest.fixture(scope="module")
def remote_lab(installed, request):
    with running_lab(f"e2e-{SESSION}-r", request, 3, len(REMOTES)) as lab:
        lab.settle()
        yield lab


def test_remote_nodes_join_without_corosync(remote_lab):
    lab = remote_lab
    state = lab.state()
    assert state.full_nodes == ["node1", "node2", "node3"] and state.remote_nodes == REMOTES
    view = lab.view()
    assert view.remote == set(REMOTES) and set(REMOTES) <= view.online
    for node in REMOTES:
        assert set(state.info(node)["daemons"]) == {"virtlogd", "libvirtd", "sshd",
                                                    "pacemaker-remoted"}
        # The connection is a resource named like the node, run by a full node.
        assert view.roles[node] == "Started" and view.resources[node][0] in state.full_nodes
    # From inside a remote node the cluster is reachable through pacemaker-remoted.
    lab.run("remote1", "crm_attribute", "--node", "remote1", "--name", "lab-remote-test",
            "--update", "yes")
    assert lab.run("node1", "crm_attribute", "--node", "remote1", "--name", "lab-remote-test",
                   "--query", "--quiet").stdout.strip() == "yes"
    # ssh with verified keys reaches remote nodes too.
    assert lab.ssh("node1", "remote2", "hostname").stdout.strip() == "remote2"


def test_vm_on_a_killed_remote_node_is_fenced_and_restarted(remote_lab):
    lab = remote_lab
    config = write_domain(lab.layout, "vmremote")
    lab.run("node1", *vms.create_argv("vmremote", config), "--disabled")
    lab.pcs("constraint", "location", "vmremote", "prefers", "remote1=50")
    try:
        lab.pcs("resource", "enable", "vmremote")
        assert lab.wait_started("vmremote") == "remote1"
        assert vms.qemu_nodes(lab.state()).get("vmremote") == ["remote1"]
        since = time.time()
        lab.cli("kill", "remote1")
        elsewhere = lab.wait_started("vmremote", not_on=("remote1",))
        assert vms.qemu_nodes(lab.state()).get("vmremote") == [elsewhere]
        # Fenced by the agent (not only powered on by someone), then back with the cluster.
        lab.wait(lambda _v: lab.power_ops("remote1", since), "remote1 fenced by fence_ravada_lab")
        lab.settle()
        assert "remote1" in lab.view().online
        assert "pacemaker-remoted" in lab.state().info("remote1")["daemons"]
    finally:
        lab.delete_vm("vmremote")
