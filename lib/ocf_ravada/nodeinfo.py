"""ocf:ravada:nodeinfo (run it as a clone).

Publishes, for Pacemaker's utilization placement and for ravada-place:
  node utilization  cpu          CPUs x cpu_ratio - reserve_cpus
                    hv_memory    MiB of RAM - reserve_memory
                    host_memory  the same: ocf:ravada:VirtualDomain (like resource-agents')
                                 sets a VM's host_memory too, and Pacemaker takes a node
                                 without it as having none, so no VM could run there.
  node attributes (transient, lifetime "reboot"):
    ravada-cpus, ravada-memory-total, ravada-memory-free (MiB, available to new processes),
    ravada-vms, ravada-vms-vcpus, ravada-vms-memory (running libvirt domains, MiB),
    ravada-storage-free (MiB, the smallest free space of the storage paths and pools),
    ravada-storage-full (1 when any of them is used at storage_full_percent or more).
A value is written to the CIB only when it changed by more than change_threshold percent
(counts, CPUs and flags: on any change), so a monitor does not churn the CIB.
Probes only look at the agent's state file: no measurement, no CIB write.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
from typing import Mapping

from . import __version__, bounded, pacemaker
from .agent import Agent
from .deadline import Deadline, DeadlineExceeded
from .log import Log
from .metadata import Action, AgentInfo
from .ocf import OcfError, Rc
from .params import Parameter, Values, finite_number
from .statefile import StateFile

MIB = 1024 * 1024
# Values compared exactly: a count or flag that changes is always worth writing.
EXACT = frozenset({"cpu", "ravada-cpus", "ravada-vms", "ravada-vms-vcpus", "ravada-storage-full"})
UTILIZATION = ("cpu", "hv_memory", "host_memory")
# A transient attribute always published: read back each monitor to notice the cluster
# dropped them all (one crm_attribute call).
MARKER = "ravada-cpus"
# Longest wait for one statvfs: a hung NFS mount must not eat the whole monitor.
STATVFS_LIMIT = 5.0
# Longest wait for one CIB write (advisory data: the next monitor retries).
WRITE_LIMIT = 5.0


def _ratio(value: str) -> str | None:
    number = finite_number(value)
    if number is None:
        return "expected a number such as 1.0 or 4"
    return None if 0 < number <= 100 else "must be > 0 and <= 100"


def _absolute_paths(value: str) -> str | None:
    relative = [p for p in value.split() if not os.path.isabs(p)]
    return f"not absolute: {' '.join(relative)}" if relative else None


P = Parameter
PARAMETERS: tuple[Parameter, ...] = (
    P("hypervisor", "Hypervisor URI",
      "libvirt connection URI used to list running domains and storage pools. "
      "Default: libvirt's default URI.", reloadable=True),
    P("cpu_ratio", "vCPUs offered per CPU",
      "Node utilization cpu is the number of CPUs times this ratio (vCPU overcommit, e.g. 4), "
      "minus reserve_cpus. Pacemaker never places more VM vCPUs than that.",
      default="1.0", reloadable=True, check=_ratio),
    P("reserve_cpus", "CPUs kept for the host",
      "CPUs (after cpu_ratio) subtracted from the published utilization cpu.",
      type="integer", default=0, minimum=0, reloadable=True),
    P("reserve_memory", "Memory kept for the host (MiB)",
      "MiB subtracted from the node's RAM in the published utilization hv_memory and host_memory "
      "(host, QEMU overhead, page cache).", type="integer", default=1024, minimum=0, reloadable=True),
    P("storage_paths", "VM storage directories",
      "Space separated absolute paths whose free space is published (ravada-storage-free, "
      "ravada-storage-full). Missing paths are reported and skipped.",
      default="/var/lib/libvirt/images", reloadable=True, check=_absolute_paths),
    P("storage_pools", "Include libvirt storage pools",
      "Also measure every active libvirt storage pool.", type="boolean", default=True, reloadable=True),
    P("storage_full_percent", "Storage nearly full at (%)",
      "ravada-storage-full becomes 1 when a storage path or pool is used at this percentage or more.",
      type="integer", default=90, minimum=1, maximum=100, reloadable=True),
    P("change_threshold", "Write threshold (%)",
      "A measured value is written to the CIB only when it moved by more than this "
      "percentage since the last write (counts and flags: on any change).",
      type="integer", default=5, minimum=0, maximum=100, reloadable=True),
)

ACTIONS = (
    Action("start", 30),
    Action("stop", 20),
    Action("monitor", 30, interval=60, depth=0),
    Action("reload-agent", 20),
    Action("meta-data", 5),
    Action("validate-all", 20),
)

INFO = AgentInfo(
    name="nodeinfo",
    version=__version__,
    shortdesc="Publishes node capacity and load for VM placement",
    longdesc=(
        "Measures this node (CPUs and memory with psutil; running domains and storage pools "
        "with libvirt; free space of VM storage directories) and publishes node utilization "
        "cpu, hv_memory and host_memory (minus host reserves) plus transient node attributes ravada-cpus, "
        "ravada-memory-total, ravada-memory-free, ravada-vms, ravada-vms-vcpus, "
        "ravada-vms-memory, ravada-storage-free and ravada-storage-full. A value is written "
        "only when it changed by more than change_threshold percent. Run it as a clone; "
        "ravada-place and placement-strategy=utilization use what it publishes."),
    parameters=PARAMETERS,
    actions=ACTIONS,
)


@dataclasses.dataclass(frozen=True)
class Storage:
    free_mib: int
    total_mib: int


@dataclasses.dataclass(frozen=True)
class Measurement:
    cpus: int
    memory_total_mib: int
    memory_available_mib: int
    storage: Mapping[str, Storage | None]   # path or "pool:<name>" -> space, None: unreadable
    domains: int | None = None              # None: libvirt could not be asked
    domain_vcpus: int | None = None
    domain_memory_mib: int | None = None


def publishable(m: Measurement, params: Mapping) -> tuple[dict[str, int], dict[str, int]]:
    """(node utilization, node attributes) to publish for a measurement."""
    utilization = {
        "cpu": max(0, math.floor(m.cpus * float(params["cpu_ratio"])) - params["reserve_cpus"]),
        "hv_memory": max(0, m.memory_total_mib - params["reserve_memory"]),
    }
    utilization["host_memory"] = utilization["hv_memory"]
    attributes = {"ravada-cpus": m.cpus, "ravada-memory-total": m.memory_total_mib,
                  "ravada-memory-free": m.memory_available_mib}
    if m.domains is not None:
        attributes.update({"ravada-vms": m.domains, "ravada-vms-vcpus": m.domain_vcpus or 0,
                           "ravada-vms-memory": m.domain_memory_mib or 0})
    if m.storage:
        readable = [s for s in m.storage.values() if s is not None]
        if readable:
            attributes["ravada-storage-free"] = min(s.free_mib for s in readable)
        # Unreadable storage cannot take a VM's disk either: it counts as full.
        full = any(s is None or (s.total_mib and (s.total_mib - s.free_mib) * 100
                                 >= params["storage_full_percent"] * s.total_mib)
                   for s in m.storage.values())
        attributes["ravada-storage-full"] = int(full)
    return utilization, attributes


def worth_writing(name: str, old: int | None, new: int, threshold_percent: int) -> bool:
    if old is None or name in EXACT:
        return old != new
    if old == 0:
        return new != 0
    return abs(new - old) * 100 > threshold_percent * abs(old)


class NodeInfo(Agent):
    info = INFO

    @property
    def state(self) -> StateFile:
        return StateFile(self.env.rsc_tmp, "nodeinfo", self.env.resource)

    @property
    def node(self) -> str | None:
        """The node Pacemaker runs us for (crm_attribute's own guess when run by hand)."""
        return self.env.meta("on_node") or None

    @property
    def can_write(self) -> bool:
        # Pacemaker always passes its feature set; CIB_file points the tools at a saved CIB.
        return bool(self.env.get("OCF_RESKEY_crm_feature_set") or self.env.get("CIB_file"))

    # -- actions ------------------------------------------------------------------------

    def validate_all(self) -> int:
        if self.env.check_level() >= 10:
            self.check_environment()
        return Rc.SUCCESS

    def check_environment(self) -> None:
        try:
            import psutil  # noqa: F401
        except ImportError:
            raise OcfError(Rc.ERR_INSTALLED, "python3-psutil is not installed") from None
        if shutil.which("crm_attribute") is None:
            raise OcfError(Rc.ERR_INSTALLED, "crm_attribute (pacemaker-cli-utils) is not installed")

    def start(self) -> int:
        self.check_environment()
        self.state.save({"published": {}})
        self.publish(force=True)
        return Rc.SUCCESS

    def stop(self) -> int:
        # What was published stays: it still describes the node for placement decisions.
        self.state.remove()
        return Rc.SUCCESS

    def monitor(self) -> int:
        if not os.path.exists(self.state.path):
            return Rc.NOT_RUNNING
        if self.is_probe:
            return Rc.SUCCESS
        self.publish(force=False)
        return Rc.SUCCESS

    def reload_agent(self) -> int:
        if os.path.exists(self.state.path):
            self.publish(force=True)
        return Rc.SUCCESS

    # -- measuring and publishing -------------------------------------------------------

    def publish(self, force: bool) -> None:
        measurement = measure(self.params, self.deadline, self.log)
        utilization, attributes = publishable(measurement, self.params)
        recorded = {} if force else dict(self.state.load().get("published") or {})
        if not self.can_write:
            self.log.info(f"not in a cluster; would publish utilization {utilization}, attributes {attributes}")
            return
        if recorded and self.transient_attributes_lost():
            recorded = {}
        threshold = self.params["change_threshold"]
        for name, value in list(utilization.items()) + list(attributes.items()):
            if not worth_writing(name, recorded.get(name), value, threshold):
                continue
            try:
                if name in UTILIZATION:
                    pacemaker.set_node_utilization(name, str(value), self.deadline, self.node,
                                                   limit=WRITE_LIMIT)
                else:
                    pacemaker.set_node_attribute(name, str(value), self.deadline, self.node,
                                                 lifetime="reboot", limit=WRITE_LIMIT)
            except pacemaker.PacemakerError as err:
                # Advisory data: never fail the action for it; the next monitor retries.
                self.log.warning(f"{name} not published: {err}")
                continue
            recorded[name] = value
            self.log.debug(f"published {name}={value}")
        self.state.save({"published": recorded})


    def transient_attributes_lost(self) -> bool:
        """The cluster dropped this node's transient attributes while we kept running: a
        remote node's are purged when the full node hosting its connection dies and the
        connection is recovered elsewhere.  ravada-cpus, always published, tells."""
        try:
            value = pacemaker.query_node_attribute(MARKER, self.deadline, self.node, lifetime="reboot",
                                                   limit=WRITE_LIMIT)
        except pacemaker.PacemakerError as err:
            self.log.debug(f"{MARKER} not read back: {err}")
            return False
        if value is None:
            self.log.info(f"{MARKER} is gone from the cluster: publishing every value again")
            return True
        return False


def measure(params: Values, deadline: Deadline, log: Log) -> Measurement:
    import psutil

    memory = psutil.virtual_memory()
    storage: dict[str, Storage | None] = {}
    for path in params["storage_paths"].split():
        storage[path] = _path_space(path, deadline, log)
    domains = vcpus = domain_memory = None
    try:
        from ocf_ravada.virt.connection import VirtError
    except ImportError as err:
        log.warning(f"python3-libvirt missing, domains and pools not measured: {err}")
        return _measurement(psutil, memory, storage)
    try:
        listed = _libvirt_view(params["hypervisor"], params["storage_pools"], deadline)
    except VirtError as err:
        # libvirtd down or hung: publish what psutil knows, keep the last domain figures.
        log.warning(f"libvirt not asked: {err}")
    else:
        domains, vcpus, domain_memory, pools = listed
        storage.update(pools)
    return _measurement(psutil, memory, storage, domains, vcpus, domain_memory)


def _measurement(psutil, memory, storage: dict[str, Storage | None], domains: int | None = None,
                 vcpus: int | None = None, domain_memory: int | None = None) -> Measurement:
    return Measurement(cpus=psutil.cpu_count() or 1, memory_total_mib=memory.total // MIB,
                       memory_available_mib=memory.available // MIB, storage=storage,
                       domains=domains, domain_vcpus=vcpus, domain_memory_mib=domain_memory)


def _disk_usage(path: str):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"storage path {path} is not a directory")
    return shutil.disk_usage(path)


def _path_space(path: str, deadline: Deadline, log: Log) -> Storage | None:
    # Both the directory check and statvfs wait on the storage: a hung NFS mount must
    # cost at most STATVFS_LIMIT.
    try:
        usage = bounded.call(f"statvfs {path}", deadline.bounded(STATVFS_LIMIT), _disk_usage, path)
    except (OSError, DeadlineExceeded) as err:
        log.warning(f"storage path {path} unreadable: {err}")
        return None
    return Storage(usage.free // MIB, usage.total // MIB)


def _libvirt_view(uri: str | None, with_pools: bool, deadline: Deadline
                  ) -> tuple[int, int, int, dict[str, Storage | None]]:
    """(running domains, their vCPUs, their MiB, storage pools) through a bounded connection."""
    import libvirt

    from ocf_ravada.virt.connection import Hypervisor, LibvirtUnavailable, VirtError

    hv = Hypervisor.connect(uri, deadline)
    try:
        running = hv.call("listing running domains", hv.conn.listAllDomains,
                          libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        vcpus = memory_kib = 0
        for dom in running:
            try:
                _state, max_kib, _kib, dom_vcpus, _cpu_time = hv.call("reading domain info", dom.info)
            except LibvirtUnavailable:
                raise
            except VirtError:
                continue  # it stopped between listing and asking
            vcpus += dom_vcpus
            memory_kib += max_kib
        pools: dict[str, Storage | None] = {}
        if with_pools:
            for pool in hv.call("listing storage pools", hv.conn.listAllStoragePools,
                                libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
                try:
                    _state, capacity, _allocation, available = hv.call("reading pool info", pool.info)
                    pools[f"pool:{pool.name()}"] = Storage(available // MIB, capacity // MIB)
                except LibvirtUnavailable:
                    raise
                except VirtError:
                    pools[f"pool:{pool.name()}"] = None
        return len(running), vcpus, memory_kib // 1024, pools
    finally:
        hv.close()
