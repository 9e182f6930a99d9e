"""The lab's ssh and link-shaping pieces that need no daemon: rates, sshd's files, the CLI."""

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from ravada_lab import configs, remote, sshd
from ravada_lab.errors import LabError
from ravada_lab.layout import LabLayout
from ravada_lab.shaping import parse_rate

TOP = Path(__file__).resolve().parents[2]
RAVADA_LAB = [str(TOP / "lab" / "ravada-lab")]
PACEMAKER_SCHEMA = Path("/usr/share/pacemaker/pacemaker-3.9.rng")


@pytest.mark.parametrize("text, bits", [
    ("200mbit", 200_000_000), ("1gbit", 10**9), ("1.5mbit", 1_500_000), ("50mbps", 400_000_000),
    ("64kbit", 64_000), (" 10MBIT ", 10_000_000),
])
def test_rates_read_like_tc(text, bits):
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text", ["", "200", "mbit", "200 mbit", "200mib", "-5mbit", "1kbit",
                                  "1000gbit", "2e3mbit"])
def test_bad_rates_are_refused(text):
    with pytest.raises(LabError, match="invalid link rate"):
        parse_rate(text)


def test_bad_rate_is_a_clear_cli_error():
    for argv in (["up", "--link-rate", "fast"], ["shape", "--rate", "fast"]):
        result = subprocess.run(RAVADA_LAB + argv + ["--name", "never-up"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 1 and "invalid link rate 'fast'" in result.stderr
        assert "Traceback" not in result.stderr


def test_sshd_listens_on_the_node_only_and_takes_keys_only():
    node = LabLayout.for_lab("t").nodes(2)[1]
    config = sshd.sshd_config(node).splitlines()
    assert "ListenAddress 10.99.0.2:22" in config
    assert "PasswordAuthentication no" in config and "KbdInteractiveAuthentication no" in config
    assert "PermitRootLogin prohibit-password" in config


def test_ssh_client_always_verifies_host_keys():
    config = [line.split() for line in sshd.ssh_config().splitlines()]
    assert ["StrictHostKeyChecking", "yes"] in config
    assert ["BatchMode", "yes"] in config


def test_known_hosts_names_node_by_name_and_address():
    node = LabLayout.for_lab("t").nodes(3)[2]
    line = sshd.known_hosts_line(node, "ssh-ed25519 AAAAkey root@node3")
    assert line == "node3,10.99.0.3 ssh-ed25519 AAAAkey"


def test_remote_nodes_have_their_own_names_and_addresses():
    lab = LabLayout.for_lab("t")
    remote1, remote12 = lab.remote_nodes(12)[0], lab.remote_nodes(12)[11]
    assert (remote1.name, str(remote1.address), remote1.mac, remote1.remote) == \
        ("remote1", "10.99.0.101", "02:00:0a:63:00:65", True)
    assert str(remote12.address) == "10.99.0.112"
    assert lab.node("remote12", 3, 12) == remote12
    assert not lab.node("node3", 3, 12).remote
    with pytest.raises(LabError, match="no node 'remote13'"):
        lab.node("remote13", 3, 12)
    with pytest.raises(LabError, match="invalid remote node name"):
        lab.node("remote0", 3, 12)


def test_remote_connections_validate_against_pacemaker_schema():
    lab = LabLayout.for_lab("t")
    resources = etree.fromstring(remote.connection_resources(lab.remote_nodes(2)))
    cib = etree.fromstring(configs.seed_cib())
    cib.find("configuration").replace(cib.find("configuration/resources"), resources)
    schema = etree.RelaxNG(etree.parse(str(PACEMAKER_SCHEMA)))
    assert schema.validate(cib), schema.error_log
    first = resources[0]
    assert (first.get("id"), first.get("class"), first.get("provider"), first.get("type")) == \
        ("remote1", "ocf", "pacemaker", "remote")
    assert first.find("instance_attributes/nvpair[@name='server']").get("value") == "10.99.0.101"


def test_remote_count_is_checked():
    result = subprocess.run(RAVADA_LAB + ["up", "--remote-nodes", "99", "--name", "never-up"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "invalid remote node count 99" in result.stderr
