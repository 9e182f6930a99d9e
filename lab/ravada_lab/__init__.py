"""ravada-lab: a real multi-node Pacemaker + corosync + libvirt cluster on one Linux host.

Every lab node is a set of namespaces (net, mount, uts, ipc, pid) held open by a small holder
process; a per-lab controller process owns the nodes (it is their "power distribution unit") and
the private switch they are cabled to.  `ravada-lab` and `fence_ravada_lab` are its clients.
"""
