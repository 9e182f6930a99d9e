"""Ceph RBD safety for the VM agent and the tools: never two writers on one disk.

    disks = disks_from_domain_xml(xml)
    with RbdGuard.open(conf, ceph_id, keyring, policy=Policy.RECOVER, node_map=NodeMap.from_cib(),
                       local_node=node) as guard:
        result = guard.before_start(disks, deadline)
        if not result.allowed: refuse with result.reason
        ... start the domain ...
        guard.after_start(disks)
"""
from .addresses import ClientAddr, whole_node_entry
from .cluster import LONG_BLOCKLIST_SECONDS, BlocklistEntry, CephSession
from .disks import RbdDisk, disks_from_domain_xml
from .errors import BadDiskSpec, CephAuthError, CephConfigMissing, CephUnreachable, ImageMissing, MissingCaps, RbdError
from .guard import GuardResult, Policy, RbdGuard, RunningCheck
from .image_state import ImageState, LockHolder, Watcher, read_image_state
from .nodes import ATTRIBUTE, NodeMap, own_ceph_ips, pacemaker_fenced, publish_node_addrs

__all__ = [
    "ATTRIBUTE", "BadDiskSpec", "BlocklistEntry", "CephAuthError", "CephConfigMissing", "CephSession", "CephUnreachable",
    "ClientAddr", "GuardResult", "ImageMissing", "ImageState", "LONG_BLOCKLIST_SECONDS", "LockHolder",
    "MissingCaps", "NodeMap", "Policy", "RbdDisk", "RbdError", "RbdGuard", "RunningCheck", "Watcher",
    "disks_from_domain_xml", "own_ceph_ips", "pacemaker_fenced", "publish_node_addrs",
    "read_image_state", "whole_node_entry",
]
