"""Parameters and actions of ocf:ravada:VirtualDomain.

Every parameter of resource-agents' VirtualDomain is here with the same name, meaning and
default, so switching is a change of provider; ours follow them.
"""
from __future__ import annotations

import os
import re

from .. import __version__
from ..metadata import Action, AgentInfo
from ..params import Parameter
from .rbdparams import RBD_PARAMETERS
from . import utilization

SHUTDOWN_MODES = ("acpi", "agent", "initctl", "signal", "paravirt")
TRANSPORTS = ("ssh", "tcp", "tls", "libssh", "libssh2", "unix", "ext")


def _absolute_path(value: str) -> str | None:
    return None if os.path.isabs(value) else "must be an absolute path"


def _shutdown_modes(value: str) -> str | None:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in modes if m not in SHUTDOWN_MODES]
    if unknown:
        return f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(SHUTDOWN_MODES)}"
    return None


def _transport(value: str) -> str | None:
    return None if value in TRANSPORTS else "expected one of " + ", ".join(TRANSPORTS)


def _user(value: str) -> str | None:
    return None if re.fullmatch(r"[a-z][-a-z0-9]*", value) else "not a valid user name"


# What may reach a URI's host part: host name characters only (no @ : / ? # or spaces).
HOST_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _host_suffix(value: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9._-]+", value) else "only letters, digits, '.', '-' and '_'"


def _has_node_placeholder_or_uri(value: str) -> str | None:
    return None if "://" in value or value.startswith(("tcp:", "unix:", "rdma:")) else "not a URI"


P = Parameter
PARAMETERS: tuple[Parameter, ...] = (
    P("config", "Domain XML file",
      "Absolute path to the libvirt domain XML file. The domain is created from it at start "
      "(transient, as resource-agents' VirtualDomain does). It should live on storage every "
      "node can read.", required=True, unique_group="config", check=_absolute_path),
    P("domain", "Domain name",
      "The libvirt domain name. Optional: by default it is read from <name> in the config. "
      "Setting it lets stop and probes work even when the config file cannot be read.",
      unique_group="domain"),
    P("hypervisor", "Hypervisor URI",
      "libvirt connection URI, e.g. qemu:///system. Default: libvirt's default URI."),
    P("force_stop", "Always force shutdown on stop",
      "Destroy the domain at once on stop instead of asking the guest to shut down.",
      type="boolean", default=False, reloadable=True),
    P("shutdown_mode", "Guest shutdown modes",
      "Comma separated shutdown modes tried in order on stop (acpi, agent, initctl, signal, "
      "paravirt); each gets an equal share of the graceful window before the next is tried. "
      "Empty: the hypervisor's default.", default="", reloadable=True, check=_shutdown_modes),
    P("destroy_reserve", "Seconds reserved for destroy",
      "Seconds of the stop timeout kept for destroying the domain after a graceful shutdown "
      "did not finish (at most half the timeout). libvirt's destroy can take 10-15 s.",
      type="integer", default=20, minimum=1, reloadable=True),
    P("migration_transport", "Remote hypervisor transport",
      "Transport used to reach the target's libvirtd during migration, inserted into the "
      "hypervisor URI (qemu+TRANSPORT://node/system).", default="", reloadable=True,
      check=lambda v: None if v == "" else _transport(v)),
    P("migration_user", "Remote hypervisor user",
      "User placed in the remote hypervisor URI (user@node). Ignored when remoteuri is set.",
      reloadable=True, check=_user),
    P("migration_downtime", "Live migration maximum downtime (ms)",
      "Maximum pause of the guest at the end of a live migration, in milliseconds. 0: libvirt's default.",
      type="integer", default=0, minimum=0, reloadable=True),
    P("migration_speed", "Live migration bandwidth (MiB/s)",
      "Bandwidth limit of a live migration in MiB/s. 0: no limit.",
      type="integer", default=0, minimum=0, reloadable=True),
    P("migration_network_suffix", "Migration network suffix",
      "Suffix added to the target node's host name (before the first dot) to use a dedicated "
      "migration network, for both the remote URI and the migration data URI.",
      default="", reloadable=True, check=lambda v: None if v == "" else _host_suffix(v)),
    P("migrateuri", "Migration data URI",
      "Explicit URI for the migration data stream; %n is replaced by the target node name. "
      "Overrides migration_network_suffix, migrateport and --migrateuri in migrate_options.",
      reloadable=True, check=_has_node_placeholder_or_uri),
    P("migrate_options", "Extra migration options",
      "Extra options as virsh migrate spells them (e.g. --p2p --tunnelled --compressed "
      "--auto-converge --postcopy --unsafe --persistent --undefinesource). "
      "A --migrateuri=URI in here is used as the data URI.", reloadable=True),
    P("migrateport", "Migration port",
      "Port of the generated migration data URI (only used with migration_network_suffix). "
      "Default: 49152 plus a random number below 64.",
      type="integer", minimum=1, maximum=65535, reloadable=True),
    P("remoteuri", "Remote hypervisor URI",
      "Explicit libvirt URI of the migration target; %n is replaced by the target node name. "
      "Overrides migration_transport, migration_user and migration_network_suffix.",
      reloadable=True, check=_has_node_placeholder_or_uri),
    P("migration_abort", "Abort migration this many seconds before the timeout",
      "A live migration still running this many seconds before the migrate_to timeout is "
      "aborted, so the guest keeps running on the source and Pacemaker sees a clean failure "
      "instead of killing the agent. 0 disables the abort.",
      type="integer", default=10, minimum=0, reloadable=True),
    P("auto_converge", "Auto-converge",
      "Throttle the guest's vCPUs when a live migration does not converge.",
      type="boolean", default=False, reloadable=True),
    P("postcopy", "Switch to post-copy",
      "Enable post-copy migration and switch to it after the first full pass of memory, so "
      "busy guests always converge. A network failure during post-copy loses the guest.",
      type="boolean", default=False, reloadable=True),
    P("monitor_scripts", "Monitor scripts",
      "Space separated scripts run by monitors at OCF_CHECK_LEVEL 20 (and by start, before it "
      "reports success); a script that exits non-zero fails the monitor.",
      default="", reloadable=True),
    P("monitor_scripts_timeout", "Timeout of each monitor script",
      "Seconds each monitor script may run before it counts as failed.",
      type="integer", default=10, minimum=1, reloadable=True),
) + utilization.parameters() + (
    P("save_config_on_stop", "Save the domain XML on stop",
      "Write the domain's current definition back to the config file on stop and migrate_to, "
      "only when it changed.", type="boolean", default=False, reloadable=True),
    P("sync_config_on_stop", "Sync the config with csync2",
      "Like save_config_on_stop, then run 'csync2 -x' on the config file.",
      type="boolean", default=False, reloadable=True),
    P("snapshot", "RAM snapshot directory",
      "Directory where stop saves the guest's RAM (NAME.state) instead of shutting it down; "
      "start restores it when present. Cannot be combined with force_stop.",
      default="", check=lambda v: None if v == "" else _absolute_path(v)),
    P("backingfile", "Backing file",
      "qcow2 backing file: start creates an overlay next to the config (same name, .qcow2) "
      "and boots the domain on it.", default="", check=lambda v: None if v == "" else _absolute_path(v)),
    P("stateless", "Recreate the overlay at each start",
      "With backingfile: discard and recreate the overlay at every start.",
      type="boolean", default=False),
    P("copyindirs", "Directories copied into a stateless guest",
      "With stateless: space separated directories copied into the guest with virt-copy-in "
      "before it boots.", default=""),
    P("start_resources", "Start pools and networks",
      "Start the libvirt storage pools and networks the domain uses (also on the migration "
      "target) before starting or migrating it.", type="boolean", default=False, reloadable=True),
) + RBD_PARAMETERS

ACTIONS: tuple[Action, ...] = (
    Action("start", 90),
    Action("stop", 90),
    Action("monitor", 30, interval=10, depth=0),
    Action("status", 30),
    Action("migrate_to", 120),
    Action("migrate_from", 60),
    Action("reload-agent", 10),
    Action("meta-data", 5),
    Action("validate-all", 5),
)

INFO = AgentInfo(
    name="VirtualDomain",
    version=__version__,
    shortdesc="Manages a libvirt virtual domain",
    longdesc=(
        "Runs a libvirt domain (VM) as a cluster resource: start, graceful stop with a bounded "
        "destroy, monitor (OCF_CHECK_LEVEL 0: state; 10: also a qemu-guest-agent ping when the "
        "guest has the channel; 20: also monitor_scripts), live migration with progress, "
        "bandwidth, downtime and an abort before the timeout. Every libvirt call is bounded by "
        "the operation timeout. A drop-in replacement for ocf:heartbeat:VirtualDomain: the same "
        "parameters have the same meaning."),
    parameters=PARAMETERS,
    actions=ACTIONS,
)
