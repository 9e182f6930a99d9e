"""Ceph RBD safety for the VM agent and the tools: never two writers on one disk.

    disks = disks_from_domain_xml(xml)
    with RbdGuard.open(conf, ceph_id, keyring, policy=Policy.RECOVER, node_map=NodeMap.from_cib(),
                       local_node=node) as guard:
        result = guard.before_start(disks, deadline)
        if not result.allowed: refuse with result.reason
        ... start the domain ...
        guard.after_start(disks)

Names are loaded on first use (PEP 562): importing the package, or its light modules such
as disks or errors, must not load librados into every agent run.
"""
import importlib

_EXPORTS = {
    "ClientAddr": "addresses", "whole_node_entry": "addresses",
    "LONG_BLOCKLIST_SECONDS": "cluster", "BlocklistEntry": "cluster", "CephSession": "cluster",
    "RbdDisk": "disks", "disks_from_domain_xml": "disks",
    "BadDiskSpec": "errors", "CephAuthError": "errors", "CephConfigMissing": "errors",
    "CephUnreachable": "errors", "ImageMissing": "errors", "MissingCaps": "errors", "RbdError": "errors",
    "GuardResult": "guard", "Policy": "guard", "RbdGuard": "guard", "RunningCheck": "guard",
    "ImageState": "image_state", "LockHolder": "image_state", "Watcher": "image_state",
    "read_image_state": "image_state",
    "ATTRIBUTE": "nodes", "NodeMap": "nodes", "own_ceph_ips": "nodes", "pacemaker_fenced": "nodes",
    "publish_node_addrs": "nodes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
