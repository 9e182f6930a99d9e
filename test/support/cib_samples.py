"""Values for each CIB template's required variables (one optional one exercised too): the
unit tests render every template with them, the lab test checks them against a live CIB."""

NODES = ("node1", "node2", "node3")

SAMPLES = {
    "vm": {"id": "vm1", "config": "/etc/libvirt/qemu/vm1.xml", "memory": "2048", "cpu": "2", "base": "deb12"},
    "base-location": {"vm": "vm0", "base": "deb12"},
    "nodeinfo-clone": {},
    "basesync-clone": {"source": "node1"},
    "cluster-options": {},
    "rsc-defaults": {},
    "alert": {"recipient": "/var/log/ravada-alerts.log"},
    "fence-ipmi": {"id": "fence-ipmi-node1", "node": "node1", "ip": "192.0.2.1", "username": "admin",
                   "password": "s3cret"},
    "fence-rbd": {"nodes": " ".join(NODES)},
    "fencing-topology": {"node": "node1", "power_device": "fence-ipmi-node1"},
}
