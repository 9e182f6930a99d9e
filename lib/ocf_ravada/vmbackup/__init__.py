"""Consistent snapshots and backups of VMs whose disks are RBD images.

    locate      which libvirt runs the VM (Pacemaker's status, or --uri) and its RBD disks
    consistent  freeze the guest, snapshot every image, always thaw
    common      options, signals and exit codes the commands share
    snapshot_cli               the ravada-snapshot command
"""
