"""ocf:ravada:VirtualDomain actions.

Monitors run every few seconds for every VM: modules only other actions need (migration,
stop, persist, checks, resources) are imported inside those actions.
"""
from __future__ import annotations

import functools
import os

import libvirt

from ..agent import Agent
from ..deadline import Deadline
from ..ocf import OcfError, Rc
from ..statefile import StateFile
from ..virt.connection import DomainGone, Hypervisor, LibvirtBusy, LibvirtUnavailable, VirtError
from . import config, rbdsafety, utilization
from .config import ConfigUnreadable, Identity
from .parameters import INFO

RUNNING_STATES = {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED,
                  libvirt.VIR_DOMAIN_SHUTDOWN, libvirt.VIR_DOMAIN_PMSUSPENDED}


class VirtualDomain(Agent):
    info = INFO

    # -- shared pieces ---------------------------------------------------------------

    def failure(self, err: Exception) -> OcfError | None:
        """libvirt errors no action handled itself: a failure that says what happened."""
        if isinstance(err, VirtError):
            kind = {LibvirtUnavailable: "libvirt unavailable", DomainGone: "domain vanished",
                    LibvirtBusy: "libvirt busy, try again"}.get(type(err), "libvirt error")
            return OcfError(Rc.ERR_GENERIC, f"{self.action}: {kind}: {err.reason}")
        return None

    @functools.cached_property
    def state(self) -> StateFile:
        return StateFile(self.env.rsc_tmp, "VirtualDomain", self.env.resource)

    @functools.cached_property
    def rbd(self) -> rbdsafety.RbdContext:
        node = self.env.meta("on_node") or os.uname().nodename
        return rbdsafety.RbdContext(self.params, node, self.deadline, self.log, self.state)

    def identity(self, strict: bool) -> Identity | None:
        return config.resolve(self.params["config"], self.params["domain"], self.state, self.deadline, strict)

    def require_identity(self) -> Identity:
        ident = self.identity(strict=True)
        if ident is None:
            try:
                config.read_text(self.params["config"], self.deadline)
            except ConfigUnreadable as err:
                raise OcfError(err.rc, str(err)) from None
            raise OcfError(Rc.ERR_CONFIGURED, "cannot tell the domain name")
        return ident

    def connect(self, why: str) -> Hypervisor:
        try:
            return Hypervisor.connect(self.params["hypervisor"], self.deadline)
        except LibvirtUnavailable as err:
            raise OcfError(Rc.ERR_GENERIC, f"cannot {why}: {err}") from None

    def domain_state(self, hv: Hypervisor, name: str) -> tuple[libvirt.virDomain | None, int, int]:
        """(domain, state, reason); (None, SHUTOFF, 0) when libvirt does not know it."""
        dom = hv.lookup(name)
        if dom is None:
            return None, libvirt.VIR_DOMAIN_SHUTOFF, 0
        try:
            state, reason = hv.call(f"reading the state of {name}", dom.state)
        except DomainGone:
            return None, libvirt.VIR_DOMAIN_SHUTOFF, 0
        return dom, state, reason

    def running_rc(self, name: str, state: int, reason: int) -> Rc:
        """Map a libvirt state to monitor's answer; failures raise with the reason."""
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            return Rc.NOT_RUNNING
        if state == libvirt.VIR_DOMAIN_CRASHED:
            raise OcfError(Rc.ERR_GENERIC, f"domain {name} crashed")
        if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR:
            raise OcfError(Rc.ERR_GENERIC, f"domain {name} is paused after a disk I/O error")
        if state in RUNNING_STATES:
            return Rc.SUCCESS
        raise OcfError(Rc.ERR_GENERIC, f"domain {name} is in no known state ({state})")

    def live_xml(self, hv: Hypervisor, dom: libvirt.virDomain) -> str:
        return hv.call("reading the domain definition", dom.XMLDesc, 0)

    def update_utilization(self, hv: Hypervisor, dom: libvirt.virDomain, force: bool = False) -> None:
        if not any(self.params[f"{p}_utilization_{a}"] for p in ("autoset", "unset")
                   for a in utilization.ATTRIBUTES):
            return
        _state, max_mem, _mem, vcpus, _cpu = hv.call("reading domain info", dom.info)
        utilization.update(self.env, self.params, self.state, vcpus, max_mem, self.deadline, self.log, force)

    # -- validate-all ----------------------------------------------------------------

    def check_parameters(self) -> None:
        """Level 0: the parameters make sense together (no look at this node)."""
        from . import migration

        p = self.params
        if p["force_stop"] and p["snapshot"]:
            raise OcfError(Rc.ERR_CONFIGURED, "force_stop and snapshot cannot be used together")
        if p["stateless"] and not p["backingfile"]:
            raise OcfError(Rc.ERR_CONFIGURED, "stateless needs backingfile")
        if p["copyindirs"] and not p["stateless"]:
            raise OcfError(Rc.ERR_CONFIGURED, "copyindirs needs stateless")
        options = migration.parse_options(p["migrate_options"])
        if p["postcopy"] and options.flags & libvirt.VIR_MIGRATE_TUNNELLED:
            raise OcfError(Rc.ERR_CONFIGURED, "postcopy cannot be used with --tunnelled migration")

    def check_environment(self) -> config.Identity:
        """Level 10: this node can run the domain (config readable and sane, tools present)."""
        import shutil

        path = self.params["config"]
        try:
            text = config.read_text(path, self.deadline)
        except ConfigUnreadable as err:
            raise OcfError(err.rc, str(err)) from None
        parsed = config.parse(path, text)
        if self.params["domain"] and self.params["domain"] != parsed.name:
            raise OcfError(Rc.ERR_CONFIGURED,
                           f"parameter domain={self.params['domain']} does not match <name>{parsed.name}</name>")
        if self.params["backingfile"]:
            if not os.path.exists(self.params["backingfile"]):
                raise OcfError(Rc.ERR_INSTALLED, f"backing file {self.params['backingfile']} does not exist")
            if shutil.which("qemu-img") is None:
                raise OcfError(Rc.ERR_INSTALLED, "qemu-img is not installed")
        if self.params["copyindirs"] and shutil.which("virt-copy-in") is None:
            raise OcfError(Rc.ERR_INSTALLED, "virt-copy-in (libguestfs-tools) is not installed")
        if self.params["sync_config_on_stop"] and shutil.which("csync2") is None:
            raise OcfError(Rc.ERR_INSTALLED, "csync2 is not installed")
        return Identity(parsed.name, parsed.uuid, "config", parsed.has_rbd)

    def validate_all(self) -> int:
        self.check_parameters()
        if self.env.check_level() >= 10:
            self.check_environment()
        return Rc.SUCCESS

    # -- monitor / status ------------------------------------------------------------

    def monitor(self) -> int:
        return self._check(self.env.check_level(), with_utilization=True)

    def status(self) -> int:
        return self._check(0, with_utilization=False)

    def _check(self, level: int, with_utilization: bool) -> int:
        ident = self.identity(strict=not self.is_probe and self.action != "status")
        if ident is None:
            if self.is_probe or self.action == "status":
                self.log.info("domain name unknown (config unreadable, never started here): not running")
                return Rc.NOT_RUNNING
            raise OcfError(Rc.ERR_GENERIC, f"cannot tell which domain to check: config "
                                           f"{self.params['config']} unreadable and no name known")
        try:
            hv = Hypervisor.connect(self.params["hypervisor"], self.deadline)
        except LibvirtUnavailable as err:
            return self._check_without_libvirt(ident, err)
        try:
            dom = hv.lookup(ident.name)
            if dom is None:
                return Rc.NOT_RUNNING
            # One call gives the state and the sizes utilization needs; the reason only
            # matters for a paused domain.
            try:
                state, max_mem, _mem, vcpus, _cpu = hv.call(f"reading the state of {ident.name}", dom.info)
                reason = hv.call("reading the pause reason", dom.state)[1] if state == libvirt.VIR_DOMAIN_PAUSED else 0
            except DomainGone:
                return Rc.NOT_RUNNING
            except LibvirtBusy as err:
                # libvirt cannot tell right now (a long job holds the domain): QEMU's process
                # can, and a healthy VM must not be restarted for libvirt being busy.
                return self._check_without_libvirt(ident, err)
            rc = self.running_rc(ident.name, state, reason)
            if rc != Rc.SUCCESS:
                return rc
            if ident.rbd and not self.is_probe and self.action == "monitor":
                # At every level: a second writer must be caught by the default monitor.
                rbdsafety.check_running(self.rbd, rbdsafety.guarded_disks(self.rbd, self.live_xml(hv, dom)))
            if level >= 10 and not self.is_probe:
                self._deep_checks(hv, dom, ident, level)
            if with_utilization:
                utilization.update(self.env, self.params, self.state, vcpus, max_mem, self.deadline, self.log)
            return Rc.SUCCESS
        except LibvirtUnavailable as err:
            return self._check_without_libvirt(ident, err)
        finally:
            hv.close()

    def _deep_checks(self, hv: Hypervisor, dom: libvirt.virDomain, ident: Identity, level: int) -> None:
        """Level 10: the guest agent answers; level 20: also the admin's scripts pass."""
        from . import checks

        checks.guest_agent_ping(hv, dom, ident.name, self.deadline)
        if level >= 20 and self.params["monitor_scripts"]:
            checks.run_scripts(self.params["monitor_scripts"], ident.name,
                               self.params["monitor_scripts_timeout"], self.deadline)

    def _check_without_libvirt(self, ident: Identity, err: VirtError) -> int:
        from ..virt import qemuproc  # psutil: only when libvirt is not there

        procs = qemuproc.find(ident.name, ident.uuid)
        if procs:
            self.log.warning(f"{err}; QEMU of {ident.name} runs (pid {procs[0].pid}): reporting running")
            return Rc.SUCCESS
        self.log.warning(f"{err}; no QEMU of {ident.name} runs: reporting stopped")
        return Rc.NOT_RUNNING

    # -- start -----------------------------------------------------------------------

    def start(self) -> int:
        from . import hostorder, resources

        self.check_parameters()
        ident = self.check_environment()
        # Caches the identity, so a stop after a failed start or a lost config finds it.
        self.require_identity()
        path = self.params["config"]
        hv = self.connect(f"start {ident.name}")
        try:
            dom, state, _reason = self.domain_state(hv, ident.name)
            if dom is not None and state != libvirt.VIR_DOMAIN_SHUTOFF:
                self.log.info(f"domain {ident.name} is already running")
                self.update_utilization(hv, dom, force=True)
                return Rc.SUCCESS
            if dom is not None:
                uuid = hv.call("reading the domain UUID", dom.UUIDString).lower()
                if ident.uuid and uuid != ident.uuid:
                    raise OcfError(Rc.ERR_INSTALLED,
                                   f"another domain named {ident.name} (uuid {uuid}) is defined on this "
                                   f"node; undefine it or fix {path}")
            hostorder.ensure(self.deadline, self.log)
            try:
                text = config.read_text(path, self.deadline)
            except ConfigUnreadable as err:
                raise OcfError(err.rc, str(err)) from None
            parsed = config.parse(path, text)
            if parsed.name != ident.name:
                raise OcfError(Rc.ERR_CONFIGURED, f"{path} changed during the start (now names "
                                                  f"{parsed.name}, not {ident.name})")
            if self.params["start_resources"]:
                resources.ensure_active(hv, parsed.pools, parsed.networks, self.log)

            def create_and_wait() -> libvirt.virDomain:
                self._create(hv, ident, path, text)
                return self._wait_running(hv, ident)

            dom = rbdsafety.start_exclusively(self.rbd, rbdsafety.guarded_disks(self.rbd, text), create_and_wait)
            if self.params["monitor_scripts"]:
                self._wait_scripts(ident)
            self.update_utilization(hv, dom, force=True)
            self.log.info(f"domain {ident.name} started")
            return Rc.SUCCESS
        except LibvirtUnavailable as err:
            raise OcfError(Rc.ERR_GENERIC, f"cannot start {ident.name}: {err}") from None
        finally:
            hv.close()

    def _create(self, hv: Hypervisor, ident: Identity, path: str, text: str) -> None:
        """Create the domain from `text`, the config as read and checked by start (a second
        read could see another file)."""
        from . import persist

        saved = self._snapshot_file(ident.name)
        try:
            if saved and os.path.exists(saved):
                hv.call(f"restoring {ident.name} from {saved}", hv.conn.restore, saved,
                        limit=self.deadline.remaining())
                os.unlink(saved)
                self.log.info(f"restored {ident.name} from {saved}")
                return
            if self.params["backingfile"]:
                persist.prepare_overlay(path, self.params["backingfile"], self.params["stateless"],
                                        self.params["copyindirs"], self.deadline, self.log)
            hv.call(f"creating domain {ident.name}", hv.conn.createXML, text, 0,
                    limit=self.deadline.remaining())
        except LibvirtUnavailable:
            raise
        except VirtError as err:
            raise OcfError(Rc.ERR_GENERIC, f"failed to start {ident.name}: {err.reason}") from None

    def _snapshot_file(self, name: str) -> str | None:
        return os.path.join(self.params["snapshot"], f"{name}.state") if self.params["snapshot"] else None

    def _wait_running(self, hv: Hypervisor, ident: Identity) -> libvirt.virDomain:
        while True:
            dom, state, reason = self.domain_state(hv, ident.name)
            if dom is not None and state == libvirt.VIR_DOMAIN_RUNNING:
                return dom
            if dom is not None and state != libvirt.VIR_DOMAIN_SHUTOFF:
                self.running_rc(ident.name, state, reason)  # raises on crashed / I/O error
            if not self.deadline.pause(0.2):
                raise OcfError(Rc.ERR_GENERIC, f"domain {ident.name} is not running after start "
                                               f"(state {state}, reason {reason})")

    def _wait_scripts(self, ident: Identity) -> None:
        from . import checks

        while True:
            try:
                checks.run_scripts(self.params["monitor_scripts"], ident.name,
                                   self.params["monitor_scripts_timeout"], self.deadline)
                return
            except OcfError as err:
                if not self.deadline.pause(1):
                    raise OcfError(Rc.ERR_GENERIC, f"started, but monitor scripts never passed: {err.reason}") from None
                self.log.info(f"waiting for monitor scripts: {err.reason}")

    # -- stop ------------------------------------------------------------------------

    def stop(self) -> int:
        from . import stop

        ident = self.identity(strict=False)
        if ident is None:
            self.log.warning(f"domain name unknown (config {self.params['config']} unreadable and "
                             f"never started on this node since boot): nothing to stop")
            return Rc.SUCCESS
        try:
            hv = Hypervisor.connect(self.params["hypervisor"], self.deadline)
        except LibvirtUnavailable as err:
            self.log.warning(str(err))
            stop.kill_qemu(ident, self.deadline, self.log)
            return self._stopped(ident)
        try:
            self._stop_with_libvirt(hv, ident)
        except LibvirtUnavailable as err:
            self.log.warning(f"libvirt lost during stop: {err}")
            stop.kill_qemu(ident, self.deadline, self.log)
        finally:
            hv.close()
        stop.verify_no_qemu(ident, self.deadline)
        return self._stopped(ident)

    def _stopped(self, ident: Identity) -> int:
        self.log.info(f"domain {ident.name} stopped")
        return Rc.SUCCESS

    def _stop_with_libvirt(self, hv: Hypervisor, ident: Identity) -> None:
        name = ident.name
        dom, state, _reason = self.domain_state(hv, name)
        if dom is None or state == libvirt.VIR_DOMAIN_SHUTOFF:
            # A start that failed half way may have left this node in the disks' owner records.
            rbdsafety.after_stop(self.rbd, rbdsafety.recorded_disks(self.rbd) if ident.rbd else [])
            return
        disks = rbdsafety.guarded_disks(self.rbd, self.live_xml(hv, dom)) if ident.rbd else []
        self._stop_domain(hv, dom, name)
        rbdsafety.after_stop(self.rbd, disks)

    def _stop_domain(self, hv: Hypervisor, dom: libvirt.virDomain, name: str) -> None:
        from . import persist, stop

        if self.params["save_config_on_stop"] or self.params["sync_config_on_stop"]:
            persist.save_config(hv, dom, self.params["config"], self.params["sync_config_on_stop"],
                                self.deadline, self.log)
        reserve = min(float(self.params["destroy_reserve"]), self.deadline.remaining() / 2)
        window = self.deadline.earlier_by(reserve)
        saved = self._snapshot_file(name)
        if saved and self._save_ram(hv, dom, name, saved, window):
            return
        if not self.params["force_stop"]:
            modes = [m.strip() for m in self.params["shutdown_mode"].split(",") if m.strip()]
            if stop.graceful_shutdown(hv, dom, name, modes, window, self.log):
                return
            self.log.warning(f"{name} did not shut down gracefully; destroying it")
        stop.destroy(hv, name, self.deadline, self.log)

    def _save_ram(self, hv: Hypervisor, dom: libvirt.virDomain, name: str, path: str,
                  window: Deadline) -> bool:
        try:
            hv.call(f"saving {name} to {path}", dom.save, path, limit=window.remaining())
        except VirtError as err:
            self.log.warning(f"saving {name} to {path} failed ({err}); shutting it down instead")
            return False
        self.log.info(f"saved {name} to {path}")
        return True

    # -- migration -------------------------------------------------------------------

    def migrate_to(self) -> int:
        from . import migration, persist

        target = self.env.meta("migrate_target")
        if not target:
            raise OcfError(Rc.ERR_CONFIGURED, "migrate_to needs OCF_RESKEY_CRM_meta_migrate_target")
        self.check_parameters()
        ident = self.require_identity()
        options = migration.parse_options(self.params["migrate_options"])
        hv = self.connect(f"migrate {ident.name}")
        try:
            dom, state, _reason = self.domain_state(hv, ident.name)
            if dom is None or state == libvirt.VIR_DOMAIN_SHUTOFF:
                raise OcfError(Rc.ERR_GENERIC, f"{ident.name} is not active locally; cannot migrate it")
            disks = rbdsafety.guarded_disks(self.rbd, self.live_xml(hv, dom)) if ident.rbd else []
            rbdsafety.check_running(self.rbd, disks)
            local_uri = hv.uri
            remote = migration.remote_uri(self.params, local_uri, target)
            data = migration.data_uri(self.params, options, target, local_uri)
            if self.params["save_config_on_stop"] or self.params["sync_config_on_stop"]:
                persist.save_config(hv, dom, self.params["config"], self.params["sync_config_on_stop"],
                                    self.deadline, self.log)
            if self.params["start_resources"]:
                self._start_remote_resources(remote)
            rbdsafety.migrating(self.rbd, disks, target, lambda: migration.run(
                hv, dom, ident.name, target, remote, data, options, self.params, self.deadline, self.log))
            return Rc.SUCCESS
        except LibvirtUnavailable as err:
            raise OcfError(Rc.ERR_GENERIC, f"cannot migrate {ident.name}: {err}") from None
        finally:
            hv.close()

    def _start_remote_resources(self, remote: str) -> None:
        from . import resources

        try:
            text = config.read_text(self.params["config"], self.deadline)
        except ConfigUnreadable as err:
            raise OcfError(err.rc, str(err)) from None
        parsed = config.parse(self.params["config"], text)
        try:
            target = Hypervisor.connect(remote, self.deadline)
        except LibvirtUnavailable as err:
            raise OcfError(Rc.ERR_GENERIC, f"migration target unreachable: {err}") from None
        try:
            resources.ensure_active(target, parsed.pools, parsed.networks, self.log)
        finally:
            target.close()

    def migrate_from(self) -> int:
        from . import hostorder

        ident = self.require_identity()
        hostorder.ensure(self.deadline, self.log)
        hv = self.connect(f"check the migrated {ident.name}")
        try:
            while True:
                dom, state, reason = self.domain_state(hv, ident.name)
                # During the incoming migration the domain is paused (reason: migration).
                if dom is not None and state == libvirt.VIR_DOMAIN_RUNNING:
                    break
                if not self.deadline.pause(0.2):
                    raise OcfError(Rc.ERR_GENERIC, f"{ident.name} did not arrive running here "
                                                   f"(state {state}, reason {reason})")
            if ident.rbd:
                rbdsafety.check_arrival(self.rbd, rbdsafety.guarded_disks(self.rbd, self.live_xml(hv, dom)),
                                        self.env.meta("migrate_source") or "")
            self.update_utilization(hv, dom, force=True)
            self.log.info(f"domain {ident.name} runs here after migration from "
                          f"{self.env.meta('migrate_source') or 'another node'}")
            return Rc.SUCCESS
        except LibvirtUnavailable as err:
            raise OcfError(Rc.ERR_GENERIC, f"cannot check the migrated {ident.name}: {err}") from None
        finally:
            hv.close()

    # -- reload-agent ----------------------------------------------------------------

    def reload_agent(self) -> int:
        """Only reloadable parameters changed: they are read fresh by every action, so
        validating them and refreshing utilization is all there is to do."""
        self.check_parameters()
        ident = self.identity(strict=True)
        if ident is None:
            return Rc.SUCCESS
        try:
            hv = Hypervisor.connect(self.params["hypervisor"], self.deadline)
        except LibvirtUnavailable as err:
            self.log.warning(f"utilization not refreshed: {err}")
            return Rc.SUCCESS
        try:
            dom, state, _reason = self.domain_state(hv, ident.name)
            if dom is not None and state != libvirt.VIR_DOMAIN_SHUTOFF:
                self.update_utilization(hv, dom, force=True)
        finally:
            hv.close()
        self.log.info("reloaded parameters")
        return Rc.SUCCESS
