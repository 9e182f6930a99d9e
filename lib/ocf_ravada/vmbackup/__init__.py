"""Consistent snapshots and backups of VMs whose disks are RBD images.

    locate      which libvirt runs the VM (Pacemaker's status, or --uri) and its RBD disks
    consistent  freeze the guest, snapshot every image, always thaw
    export      one backup run: snapshot, then full / incremental streams (rbd.backup: Ceph side)
    progress    bytes, rate and ETA on a terminal
    common      options, signals and exit codes the commands share
    snapshot_cli, backup_cli   the ravada-snapshot and ravada-backup commands
"""
