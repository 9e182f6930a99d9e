"""Resource utilization (cpu, host_memory, hv_memory) kept equal to the domain's size.

The values last written are remembered in the state file, so the CIB is looked at only when
a value changes (a resize, an edited config, a start), not on every monitor as the shell agent
does; and then written in one update, only where it differs (each write makes the DC abort and
recompute its transition: a burst of starts must not pay three per VM).
"""
from __future__ import annotations

from ..deadline import Deadline
from ..log import Log
from ..ocf import Environment
from ..params import Parameter
from ..statefile import StateFile

# Utilization attribute -> what it is kept equal to; the autoset_/unset_ parameters are
# generated from this table.
WHAT: dict[str, str] = {
    "cpu": "the domain's vCPU count",
    "host_memory": "the domain's maximum memory (MiB)",
    "hv_memory": "the domain's maximum memory (MiB)",
}
ATTRIBUTES = tuple(WHAT)
DELETED = "<deleted>"
# Longest wait for each tool (CIB query, diff, patch): placement data must not eat an action's time.
WRITE_LIMIT = 5.0


def parameters() -> tuple[Parameter, ...]:
    """autoset_utilization_<attr> for every attribute, then unset_utilization_<attr>."""
    autoset = tuple(Parameter(
        f"autoset_utilization_{attr}", f"Set {attr} utilization",
        f"Keep the resource's utilization '{attr}' equal to {what}.",
        type="boolean", default=True, reloadable=True) for attr, what in WHAT.items())
    unset = tuple(Parameter(
        f"unset_utilization_{attr}", f"Remove {attr} utilization",
        f"Remove the resource's utilization '{attr}' (only when autoset_utilization_{attr} is false).",
        type="boolean", default=False, reloadable=True) for attr in WHAT)
    return autoset + unset


def wanted(params, vcpus: int, max_memory_kib: int) -> dict[str, str]:
    """Attribute -> value to set, or DELETED to remove; absent: leave alone."""
    values = {"cpu": str(vcpus), "host_memory": str(max_memory_kib // 1024),
              "hv_memory": str(max_memory_kib // 1024)}
    result = {}
    for attr in ATTRIBUTES:
        if params[f"autoset_utilization_{attr}"]:
            result[attr] = values[attr]
        elif params[f"unset_utilization_{attr}"]:
            result[attr] = DELETED
    return result


def resource_id(env: Environment) -> str | None:
    instance = env.get("OCF_RESOURCE_INSTANCE")
    # A clone instance is "id:N"; utilization belongs to the primitive "id".
    return instance.split(":", 1)[0] if instance else None


def update(env: Environment, params, state: StateFile, vcpus: int, max_memory_kib: int,
           deadline: Deadline, log: Log, force: bool = False) -> None:
    target = wanted(params, vcpus, max_memory_kib)
    recorded = {} if force else dict(state.load().get("utilization") or {})
    changes = {a: v for a, v in target.items() if recorded.get(a) != v}
    rsc = resource_id(env)
    # Pacemaker always passes its feature set; without it (a manual run, ocf-tester) there
    # is no cluster whose CIB we could or should write.
    if not changes or rsc is None or not env.get("OCF_RESKEY_crm_feature_set"):
        return
    from .. import pacemaker  # subprocess: only when something may be written

    try:
        written = pacemaker.set_resource_utilization(
            rsc, {a: None if v == DELETED else v for a, v in changes.items()}, deadline, limit=WRITE_LIMIT)
    except pacemaker.PacemakerError as err:
        # Placement data is advisory: never fail an action for it; retried next monitor.
        log.info(f"utilization of {rsc} not updated: {err}")
        return
    if written:
        log.info(f"utilization of {rsc}: " + ", ".join(
            f"{a} removed" if v == DELETED else f"{a}={v}" for a, v in changes.items()))
    state.update(utilization={**recorded, **changes})
