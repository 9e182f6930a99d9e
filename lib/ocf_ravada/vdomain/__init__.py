"""ocf:ravada:VirtualDomain: a libvirt domain as a Pacemaker resource."""
