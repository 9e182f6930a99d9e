"""Migration URIs and options, as resource-agents' VirtualDomain builds them."""
import libvirt
import pytest

from ocf_ravada.ocf import Environment, OcfError
from ocf_ravada.params import parse_all
from ocf_ravada.vdomain import migration
from ocf_ravada.vdomain.parameters import PARAMETERS


def params(**given):
    env = {"OCF_RESKEY_config": "/etc/vm.xml", **{f"OCF_RESKEY_{k}": v for k, v in given.items()}}
    return parse_all(PARAMETERS, Environment(env))


@pytest.mark.parametrize("given, uri", [
    ({}, "qemu://node2/system"),
    ({"migration_transport": "ssh"}, "qemu+ssh://node2/system"),
    ({"migration_transport": "ssh", "migration_user": "admin"}, "qemu+ssh://admin@node2/system"),
    ({"migration_transport": "tcp", "migration_network_suffix": "-mig"}, "qemu+tcp://node2-mig/system"),
    ({"remoteuri": "qemu+tls://%n.example/system", "migration_user": "ignored"}, "qemu+tls://node2.example/system"),
])
def test_remote_uri(given, uri):
    assert migration.remote_uri(params(**given), "qemu:///system", "node2") == uri


def test_remote_uri_keeps_fqdn_domain_after_the_suffix_and_drops_local_socket():
    p = params(migration_transport="tcp", migration_network_suffix="-mig")
    assert migration.remote_uri(p, "qemu:///system?socket=/run/x", "node2.lab.example") == \
        "qemu+tcp://node2-mig.lab.example/system"


def test_data_uri_precedence():
    options = migration.parse_options("--migrateuri=tcp:fromoptions:5000")
    assert migration.data_uri(params(migrateuri="tcp:%n-data:49200"), options, "n2", "qemu:///system") == "tcp:n2-data:49200"
    assert migration.data_uri(params(), options, "n2", "qemu:///system") == "tcp:fromoptions:5000"
    generated = migration.data_uri(params(migration_network_suffix="-mig", migrateport="50000"),
                                   migration.parse_options(""), "n2", "qemu:///system")
    assert generated == "tcp:n2-mig:50000"
    assert migration.data_uri(params(), migration.parse_options(""), "n2", "qemu:///system") is None


def test_virsh_options_become_libvirt_flags():
    options = migration.parse_options("--p2p --tunnelled --persistent --undefinesource --bandwidth 50 --verbose")
    for flag in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER, libvirt.VIR_MIGRATE_TUNNELLED,
                 libvirt.VIR_MIGRATE_PERSIST_DEST, libvirt.VIR_MIGRATE_UNDEFINE_SOURCE):
        assert options.flags & flag
    assert options.values[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 50
    with pytest.raises(OcfError):
        migration.parse_options("--dname other")
    with pytest.raises(OcfError):
        migration.parse_options("--migrateuri")
