"""libvirt helpers shared by the agents: bounded connections, domain XML, QEMU processes."""
