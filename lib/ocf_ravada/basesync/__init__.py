"""ocf:ravada:basesync: Ravada's base volumes on every node, without shared storage.

Who owns what:
  manifest   the main node's list of bases (name, file, size, SHA-256, format, backing
             chain, node list) and its strict parser: the manifest is untrusted JSON
  verify     SHA-256 of files (whole or as they grow), and installing a verified copy
             (fsync, read-only, atomic rename): nothing half-written under a real name
  space      free space against the `reserve`
  inuse      which files libvirt domains and qcow2 overlays in the directory still use
  transfer   rsync over ssh (host keys verified) from one holder: the only network code
  fetch      one base from the best holder: a pipelined chain (each node appends from its
             predecessor's copy while that copy is still arriving), re-chained on stalls
  cluster    who holds what (node attributes ravada-base-<name>) and where the clone runs;
             talks to Pacemaker only through ocf_ravada.pacemaker
  status     the worker's report, read by monitor
  worker     the background process start launches: the reconcile loop
  process    starting, identifying and stopping that worker by recorded PID
  agent      the OCF actions
"""
