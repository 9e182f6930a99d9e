"""Real libvirtd + QEMU for the integration tests: one private node for the session."""
import pytest

from support.stack import require_stack
from support.libvirt_node import LibvirtNode


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    require_stack("real libvirt tests", "libvirtd", "virtlogd", "qemu-system-x86_64", "unshare", "nsenter")
    lv = LibvirtNode(str(tmp_path_factory.mktemp("libvirt")), "node1")
    try:
        lv.start()
        yield lv
    finally:
        lv.stop()
