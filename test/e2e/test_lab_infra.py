"""The lab's infrastructure for tools that copy between nodes: OpenSSH on every node with
verified host keys, rsync, and links shaped to a rate (tc) measured with a real transfer."""

import time

import pytest

pytestmark = pytest.mark.lab

BLOB = "/run/lab-infra-blob"      # /run is a private tmpfs on every node
BLOB_MIB = 32
RATE = "100mbit"


def sha256_of(lab, node: str, path: str) -> str:
    return lab.run(node, "sha256sum", path).stdout.split()[0]


@pytest.fixture
def blob(settled_lab):
    """Random data on the first node (random: nothing on the way can compress it)."""
    lab = settled_lab
    source = lab.state().node_names[0]
    lab.run(source, "sh", "-c", f"head -c {BLOB_MIB}M /dev/urandom > {BLOB}")
    yield source
    for node in lab.state().powered_nodes():
        lab.run(node, "rm", "-f", BLOB, check=False)


def test_ssh_between_nodes_verifies_host_keys(settled_lab):
    lab = settled_lab
    state = lab.state()
    first, second = state.node_names[:2]
    # By name and by address, without a prompt: both are in every node's known_hosts.
    assert lab.ssh(first, second, "hostname").stdout.strip() == second
    assert lab.ssh(first, state.address(second), "hostname").stdout.strip() == second
    assert lab.ssh(second, first, "id", "-un").stdout.strip() == "root"
    # The keys are checked, not accepted: without the known_hosts the host is refused.
    unknown = lab.ssh(first, "-o", "GlobalKnownHostsFile=/dev/null",
                      "-o", "UserKnownHostsFile=/dev/null", second, "true", check=False)
    assert unknown.returncode == 255 and "Host key verification failed" in unknown.stderr
    # What the node presents is the key `up` recorded for it in the lab's known_hosts.
    presented = lab.run(first, "ssh-keyscan", "-t", "ed25519", state.address(second)).stdout
    key = presented.split()[-1]
    recorded = [line.split() for line in state.known_hosts.read_text().splitlines()]
    assert [f"{second},{state.address(second)}", "ssh-ed25519", key] in recorded
    # Each node runs its own sshd with its own host key, never the host's.
    host_key = open("/etc/ssh/ssh_host_ed25519_key.pub").read().split()[1]
    assert key != host_key


def test_rsync_over_ssh_copies_between_nodes(settled_lab, blob):
    lab = settled_lab
    target = next(n for n in lab.state().node_names if n != blob)
    lab.run(target, "rsync", "-a", f"{blob}:{BLOB}", BLOB)
    assert sha256_of(lab, target, BLOB) == sha256_of(lab, blob, BLOB)


def test_shaped_link_runs_near_its_rate(settled_lab, blob):
    lab = settled_lab
    target = next(n for n in lab.state().node_names if n != blob)
    lab.shape(RATE)
    try:
        state = lab.state()
        assert state.link_rate == RATE and state.link_rate_bits == 100_000_000
        assert " htb " in lab.run(target, "tc", "qdisc", "show", "dev", "eth0").stdout
        # The handshake's time is measured apart, so only the bytes' time is compared.
        started = time.monotonic()
        lab.ssh(target, blob, "true")
        handshake = time.monotonic() - started
        started = time.monotonic()
        lab.run(target, "rsync", "-a", "--whole-file", f"{blob}:{BLOB}", BLOB)
        elapsed = time.monotonic() - started - handshake
    finally:
        lab.shape(None)
    measured = BLOB_MIB * 2**20 * 8 / elapsed
    assert 0.5 * state.link_rate_bits <= measured <= 1.3 * state.link_rate_bits, \
        f"{measured / 1e6:.0f} Mbit/s measured on a {RATE} link"
    assert lab.state().link_rate is None
    assert " htb " not in lab.run(target, "tc", "qdisc", "show", "dev", "eth0").stdout
    # Unshaped again: the same copy runs far faster than the rate (the limit really went).
    lab.run(target, "rm", BLOB)
    started = time.monotonic()
    lab.run(target, "rsync", "-a", "--whole-file", f"{blob}:{BLOB}", BLOB)
    assert time.monotonic() - started < elapsed / 2
    assert sha256_of(lab, target, BLOB) == sha256_of(lab, blob, BLOB)
