"""A VM under Pacemaker in the lab: it starts, and it moves by live migration only."""

import libvirt
import pytest

from ravada_lab import vms

from lab_support import QemuWatch, domain_state

pytestmark = pytest.mark.lab


def assert_arrived_live(lab, watch: QemuWatch, vm: str, source: str, target: str) -> None:
    seen = watch.nodes_of(vm)
    assert seen, "no sample taken"
    assert all(seen), f"{vm} had no QEMU process anywhere at some point: it stopped"
    # A live migration runs the incoming QEMU on the target beside the source's.
    assert sorted([source, target]) in seen, f"{vm} never had QEMU on {source} and {target}"
    assert seen[-1] == [target], f"{vm} QEMU ends on {seen[-1]}, expected only {target}"
    # libvirt on the target knows how the domain got there: by migration, not a boot.
    assert domain_state(lab, target, vm) == (libvirt.VIR_DOMAIN_RUNNING,
                                             libvirt.VIR_DOMAIN_RUNNING_MIGRATED)


def test_vm_starts_where_pacemaker_says(settled_lab):
    lab = settled_lab
    lab.create_vm("vmstart")
    try:
        node = lab.wait_started("vmstart")
        assert vms.qemu_nodes(lab.state()).get("vmstart") == [node]
        assert domain_state(lab, node, "vmstart") == (libvirt.VIR_DOMAIN_RUNNING,
                                                      libvirt.VIR_DOMAIN_RUNNING_BOOTED)
    finally:
        lab.delete_vm("vmstart")
    assert "vmstart" not in vms.qemu_nodes(lab.state())


def test_resource_move_live_migrates(settled_lab):
    lab = settled_lab
    lab.create_vm("vmmove")
    try:
        source = lab.wait_started("vmmove")
        target = next(n for n in lab.state().node_names if n != source)
        with QemuWatch(lab) as watch:
            lab.pcs("resource", "move", "vmmove", target)
            assert lab.wait_started("vmmove", not_on=(source,)) == target
        assert_arrived_live(lab, watch, "vmmove", source, target)
    finally:
        lab.pcs("resource", "clear", "vmmove")
        lab.delete_vm("vmmove")


def test_standby_evacuates_by_live_migration(settled_lab):
    lab = settled_lab
    lab.create_vm("vmdrain")
    source = lab.wait_started("vmdrain")
    try:
        with QemuWatch(lab) as watch:
            lab.pcs("node", "standby", source)
            target = lab.wait_started("vmdrain", not_on=(source,))
        assert_arrived_live(lab, watch, "vmdrain", source, target)
    finally:
        lab.pcs("node", "unstandby", source)
        lab.delete_vm("vmdrain")
