"""ocf-ravada: OCF resource agents and tools for highly available libvirt VMs."""

__version__ = "0.1.0"
