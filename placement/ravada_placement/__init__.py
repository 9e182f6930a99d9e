"""ravada_placement: place libvirt VMs on Pacemaker nodes by vCPU, memory, users and bases.

The library plans; Pacemaker executes.  A plan becomes `rsc_location` constraints whose ids
start with `ravada-place-`, so the tool only ever replaces its own constraints.
"""
