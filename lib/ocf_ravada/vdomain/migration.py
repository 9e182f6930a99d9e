"""Live migration: target URIs as resource-agents' VirtualDomain builds them, the options
it passes to virsh translated into libvirt flags, and a job runner that logs progress and
aborts in time.
"""
from __future__ import annotations

import random
import shlex
import threading
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import libvirt

from ..deadline import Deadline
from ..log import Log
from ..ocf import OcfError, Rc
from ..virt.connection import Hypervisor, LibvirtUnavailable, VirtError

# virsh migrate switches and the libvirt flag each one sets.
FLAG_OPTIONS = {
    "--live": libvirt.VIR_MIGRATE_LIVE,
    "--p2p": libvirt.VIR_MIGRATE_PEER2PEER,
    "--tunnelled": libvirt.VIR_MIGRATE_TUNNELLED,
    "--persistent": libvirt.VIR_MIGRATE_PERSIST_DEST,
    "--undefinesource": libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
    "--suspend": libvirt.VIR_MIGRATE_PAUSED,
    "--copy-storage-all": libvirt.VIR_MIGRATE_NON_SHARED_DISK,
    "--copy-storage-inc": libvirt.VIR_MIGRATE_NON_SHARED_INC,
    "--change-protection": libvirt.VIR_MIGRATE_CHANGE_PROTECTION,
    "--unsafe": libvirt.VIR_MIGRATE_UNSAFE,
    "--compressed": libvirt.VIR_MIGRATE_COMPRESSED,
    "--abort-on-error": libvirt.VIR_MIGRATE_ABORT_ON_ERROR,
    "--auto-converge": libvirt.VIR_MIGRATE_AUTO_CONVERGE,
    "--rdma-pin-all": libvirt.VIR_MIGRATE_RDMA_PIN_ALL,
    "--postcopy": libvirt.VIR_MIGRATE_POSTCOPY,
    "--tls": libvirt.VIR_MIGRATE_TLS,
    "--parallel": libvirt.VIR_MIGRATE_PARALLEL,
}
# virsh switches that take a value, and the typed migration parameter they set.
VALUE_OPTIONS = {
    "--migrateuri": (libvirt.VIR_MIGRATE_PARAM_URI, str),
    "--listen-address": (libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS, str),
    "--bandwidth": (libvirt.VIR_MIGRATE_PARAM_BANDWIDTH, int),
    "--parallel-connections": (libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS, int),
    "--graphicsuri": (libvirt.VIR_MIGRATE_PARAM_GRAPHICS_URI, str),
}
IGNORED_OPTIONS = {"--verbose"}  # progress is always logged


class MigrationOptions(NamedTuple):
    flags: int
    values: dict[str, Any]


def parse_options(text: str | None) -> MigrationOptions:
    """migrate_options (virsh syntax) as libvirt flags and parameters; unknown → error 6."""
    flags = libvirt.VIR_MIGRATE_LIVE
    values: dict[str, Any] = {}
    try:
        words = shlex.split(text or "")
    except ValueError as err:
        raise OcfError(Rc.ERR_CONFIGURED, f"migrate_options cannot be parsed: {err}") from None
    i = 0
    while i < len(words):
        word = words[i]
        name, has_value, value = word.partition("=")
        if name in FLAG_OPTIONS and not has_value:
            flags |= FLAG_OPTIONS[name]
        elif name in VALUE_OPTIONS:
            if not has_value:
                if i + 1 >= len(words):
                    raise OcfError(Rc.ERR_CONFIGURED, f"migrate_options: {name} needs a value")
                i += 1
                value = words[i]
            key, kind = VALUE_OPTIONS[name]
            try:
                values[key] = kind(value)
            except ValueError:
                raise OcfError(Rc.ERR_CONFIGURED, f"migrate_options: bad value '{value}' for {name}") from None
        elif name not in IGNORED_OPTIONS:
            raise OcfError(Rc.ERR_CONFIGURED,
                           f"migrate_options: unsupported option '{word}' (supported: "
                           f"{' '.join(sorted(FLAG_OPTIONS) + sorted(VALUE_OPTIONS))})")
        i += 1
    return MigrationOptions(flags, values)


def checked_node(node: str) -> str:
    """The migration target's node name, refused unless it is a plain host name: it is put
    into URIs (a name like 'h@x:22/y?' would point them elsewhere)."""
    from .parameters import HOST_CHARS

    if not HOST_CHARS.fullmatch(node):
        raise OcfError(Rc.ERR_CONFIGURED, f"migration target {node!r} is not a host name")
    return node


def target_host(node: str, suffix: str) -> str:
    """node with the migration network suffix added before the domain part of an FQDN."""
    node = checked_node(node)
    if not suffix:
        return node
    host, dot, domain = node.partition(".")
    return f"{host}{suffix}{dot}{domain}"


def remote_uri(params, local_uri: str, node: str) -> str:
    node = checked_node(node)
    if params["remoteuri"]:
        return params["remoteuri"].replace("%n", node)
    local = urlsplit(local_uri)
    scheme = local.scheme.split("+", 1)[0]
    if params["migration_transport"]:
        scheme += "+" + params["migration_transport"]
    host = target_host(node, params["migration_network_suffix"])
    netloc = f"{params['migration_user']}@{host}" if params["migration_user"] else host
    # The query (e.g. a local socket path) only makes sense on this host.
    return urlunsplit((scheme, netloc, local.path or "/system", "", ""))


def data_uri(params, options: MigrationOptions, node: str, local_uri: str) -> str | None:
    node = checked_node(node)
    if params["migrateuri"]:
        return params["migrateuri"].replace("%n", node)
    if libvirt.VIR_MIGRATE_PARAM_URI in options.values:
        return options.values[libvirt.VIR_MIGRATE_PARAM_URI]
    if params["migration_network_suffix"] and urlsplit(local_uri).scheme.startswith("qemu"):
        port = params["migrateport"] or 49152 + random.randrange(64)
        return f"tcp:{target_host(node, params['migration_network_suffix'])}:{port}"
    return None


class _Job(threading.Thread):
    """The blocking migrate call, in its own thread so the main one can watch and abort."""

    def __init__(self, fn, *args) -> None:
        super().__init__(name="migration", daemon=True)
        self._fn = fn
        self._args = args
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn(*self._args)
        except BaseException as err:
            self.error = err


def _progress(stats: dict[str, Any]) -> str:
    total = stats.get("data_total") or 0
    remaining = stats.get("data_remaining") or 0
    done = 100.0 * (total - remaining) / total if total else 0.0
    rate = (stats.get("memory_bps") or 0) / 2 ** 20
    return (f"{done:.0f}% ({remaining / 2 ** 20:.0f} of {total / 2 ** 20:.0f} MiB left, "
            f"pass {stats.get('memory_iteration', 0)}, {rate:.0f} MiB/s)")


def run(hv: Hypervisor, dom: libvirt.virDomain, name: str, node: str, remote: str,
        data: str | None, options: MigrationOptions, params, deadline: Deadline, log: Log) -> None:
    """Migrate `dom` to `node`; returns when it runs there, raises OcfError otherwise."""
    flags = options.flags
    mparams = {k: v for k, v in options.values.items() if k != libvirt.VIR_MIGRATE_PARAM_URI}
    if data:
        mparams[libvirt.VIR_MIGRATE_PARAM_URI] = data
    if params["migration_speed"]:
        mparams[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = params["migration_speed"]
        # Also on the domain, as `virsh migrate-setspeed` does: libvirt 9 does not always
        # apply the migration parameter once the domain's QEMU has migrated before.
        hv.call("setting the migration speed", dom.migrateSetMaxSpeed, params["migration_speed"], 0, limit=5)
    if params["auto_converge"]:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if params["postcopy"]:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY

    if flags & libvirt.VIR_MIGRATE_PEER2PEER:
        job = _Job(dom.migrateToURI3, remote, mparams, flags)
        dest = None
    else:
        try:
            dest = Hypervisor.connect(remote, deadline)
        except LibvirtUnavailable as err:
            raise OcfError(Rc.ERR_GENERIC, f"{node} unreachable for migration: {err}") from None
        job = _Job(dom.migrate3, dest.conn, mparams, flags)
    log.info(f"migrating {name} to {node} via {remote}" + (f" (data: {data})" if data else ""))

    abort_at = deadline.earlier_by(params["migration_abort"]) if params["migration_abort"] else deadline
    started = time.monotonic()
    downtime_set = not params["migration_downtime"]
    postcopy_started = False
    aborted = False
    last_report = 0.0
    job.start()
    while job.is_alive() and not deadline.expired():
        job.join(0.25)
        if not job.is_alive():
            break
        try:
            if not downtime_set:
                # Only accepted once the migration job exists, hence in the loop.
                hv.call("setting the migration downtime", dom.migrateSetMaxDowntime,
                        params["migration_downtime"], 0, limit=2)
                downtime_set = True
            stats = hv.call("reading migration progress", dom.jobStats, 0, limit=2)
        except LibvirtUnavailable as err:
            log.warning(f"migration progress unavailable: {err}")
            continue
        except VirtError:
            continue  # the job is not up yet, or just finished
        now = time.monotonic()
        if now - last_report >= 5:
            log.info(f"migration of {name} to {node}: {_progress(stats)}")
            last_report = now
        if params["postcopy"] and not postcopy_started and stats.get("memory_iteration", 0) >= 2:
            hv.call("switching to post-copy", dom.migrateStartPostCopy, 0, limit=5)
            postcopy_started = True
            log.info(f"migration of {name}: switched to post-copy after the first pass")
        if not aborted and not postcopy_started and abort_at.expired():
            log.warning(f"migration of {name} to {node} not done after {now - started:.0f}s "
                        f"({_progress(stats)}): aborting it before the timeout")
            try:
                hv.call("aborting the migration", dom.abortJob, limit=5)
                aborted = True
            except VirtError as err:
                log.error(f"could not abort the migration: {err}")
    if job.is_alive():
        raise OcfError(Rc.ERR_GENERIC, f"migration of {name} to {node} did not finish or abort in time")
    if dest is not None:
        dest.close()
    if aborted:
        raise OcfError(Rc.ERR_GENERIC,
                       f"migration of {name} to {node} aborted after {time.monotonic() - started:.0f}s, "
                       f"{params['migration_abort']}s before the timeout; the domain still runs here")
    if job.error is not None:
        message = job.error.get_error_message() if isinstance(job.error, libvirt.libvirtError) else str(job.error)
        raise OcfError(Rc.ERR_GENERIC, f"migration of {name} to {node} failed: {message}")
    log.info(f"migrated {name} to {node} in {time.monotonic() - started:.1f}s")
