"""start_resources: the storage pools and networks a domain needs, active before it starts."""
from __future__ import annotations

from ..log import Log
from ..ocf import OcfError, Rc
from ..virt.connection import Hypervisor, LibvirtUnavailable, VirtError


def ensure_active(hv: Hypervisor, pools: frozenset[str], networks: frozenset[str], log: Log) -> None:
    for pool_name in sorted(pools):
        try:
            pool = hv.call(f"looking up pool {pool_name}", hv.conn.storagePoolLookupByName, pool_name)
            if hv.call(f"checking pool {pool_name}", pool.isActive):
                hv.call(f"refreshing pool {pool_name}", pool.refresh, 0)
            else:
                hv.call(f"starting pool {pool_name}", pool.create, 0)
                log.info(f"started storage pool {pool_name}")
        except LibvirtUnavailable:
            raise
        except VirtError as err:
            raise OcfError(Rc.ERR_GENERIC, f"storage pool {pool_name}: {err.reason}") from None
    for net_name in sorted(networks):
        try:
            net = hv.call(f"looking up network {net_name}", hv.conn.networkLookupByName, net_name)
            if not hv.call(f"checking network {net_name}", net.isActive):
                hv.call(f"starting network {net_name}", net.create)
                log.info(f"started network {net_name}")
        except LibvirtUnavailable:
            raise
        except VirtError as err:
            raise OcfError(Rc.ERR_GENERIC, f"network {net_name}: {err.reason}") from None
