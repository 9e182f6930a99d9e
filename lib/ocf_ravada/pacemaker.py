"""Pacemaker's command-line tools: the one module that runs them.

Every call is bounded by the caller's `Deadline` (and, optionally, a shorter per-call
limit), runs with LC_ALL=C and stdin closed, and fails with one typed error:

    PacemakerError(reason)          base class; `.reason` is one line for an exit reason
      ToolMissing                   the tool is not installed (pacemaker-cli-utils)
      ToolTimeout                   it did not answer in time (it is killed)
      ToolFailed                    non-zero exit; `.returncode`, `.stderr`
      BadOutput                     its XML output is unusable (see safexml)

Advisory callers catch exactly PacemakerError and warn.

API (all take `deadline: Deadline` and optional `limit` seconds):
    run(argv, deadline, env=, ok_codes=, limit=) -> str        any tool, stdout
    run_xml(argv, deadline, ...) -> etree root                 same, output parsed safely
    query_cib(deadline) -> etree root                          cibadmin --query
    cluster_status(deadline, cib_file=None) -> etree root      crm_mon --output-as=xml
    fencing_history(node, deadline) -> etree root              stonith_admin --history
    local_node(deadline) -> str                                crm_node -n
    verify(cib_file, deadline) -> (valid, messages)            crm_verify
    verify_cib(root, deadline) -> (valid, messages)            crm_verify of a parsed CIB
    apply_change(old, new, deadline)                           old -> new as one cibadmin --patch
    set_node_attribute / set_node_utilization / set_utilization / delete_utilization
    node_attribute(cib, node, name) / node_attributes(cib, name)   read a parsed CIB
    node_online(status, node)                                  from crm_mon's XML

Node attributes are read with Pacemaker's precedence: a transient attribute (the node's
status section, written by attrd / crm_attribute --lifetime reboot) wins over the permanent
one in the nodes section, as the scheduler evaluates rules and constraints.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Mapping

from lxml import etree

from . import safexml
from .deadline import Deadline

# A healthy cluster answers in well under a second; a CIB manager that is busy electing a DC
# may need a few. Callers can ask for less.
DEFAULT_LIMIT = 30.0


class PacemakerError(Exception):
    """A Pacemaker tool could not give an answer; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ToolMissing(PacemakerError):
    pass


class ToolTimeout(PacemakerError):
    pass


class ToolFailed(PacemakerError):
    def __init__(self, reason: str, returncode: int, stderr: str) -> None:
        super().__init__(reason)
        self.returncode = returncode
        self.stderr = stderr


class BadOutput(PacemakerError):
    pass


def run(argv: list[str], deadline: Deadline, *, env: Mapping[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,), limit: float = DEFAULT_LIMIT) -> str:
    """Run a Pacemaker tool; its stdout (decoded leniently) when the exit code is in ok_codes."""
    timeout = deadline.bounded(limit)
    if timeout <= 0:
        raise ToolTimeout(f"no time left to run {argv[0]}")
    try:
        done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout,
                              env={**os.environ, **(env or {}), "LC_ALL": "C"})
    except FileNotFoundError:
        raise ToolMissing(f"{argv[0]} is not installed (pacemaker-cli-utils)") from None
    except PermissionError as err:
        raise ToolMissing(f"{argv[0]} cannot be run: {err.strerror}") from None
    except subprocess.TimeoutExpired:
        raise ToolTimeout(f"{argv[0]} did not answer within {timeout:.1f}s") from None
    stdout = done.stdout.decode("utf-8", "replace")
    stderr = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode not in ok_codes:
        detail = " ".join((stderr or stdout.strip() or f"exit {done.returncode}").split())
        raise ToolFailed(f"{argv[0]} failed: {detail[:300]}", done.returncode, stderr)
    return stdout


def run_xml(argv: list[str], deadline: Deadline, **kwargs) -> etree._Element:
    """run(), with the output parsed by the safe parser (BadOutput when unusable)."""
    out = run(argv, deadline, **kwargs)
    try:
        return safexml.parse(out, f"output of {argv[0]}")
    except safexml.UnsafeXml as err:
        raise BadOutput(str(err)) from None


def query_cib(deadline: Deadline, limit: float = DEFAULT_LIMIT) -> etree._Element:
    """The live CIB (or the file $CIB_file names)."""
    return run_xml(["cibadmin", "--query"], deadline, limit=limit)


def cluster_status(deadline: Deadline, cib_file: str | None = None,
                   limit: float = DEFAULT_LIMIT) -> etree._Element:
    """crm_mon's XML status (nodes online, where resources run), of `cib_file` if given."""
    return run_xml(["crm_mon", "--one-shot", "--inactive", "--output-as=xml"], deadline,
                   env={"CIB_file": cib_file} if cib_file else None, limit=limit)


def fencing_history(node: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> etree._Element:
    """stonith_admin's XML fencing history of `node`."""
    return run_xml(["stonith_admin", "--history", node, "--output-as=xml"], deadline, limit=limit)


def local_node(deadline: Deadline, limit: float = DEFAULT_LIMIT) -> str:
    """This node's name in the cluster (crm_node -n); BadOutput when it prints none."""
    name = run(["crm_node", "-n"], deadline, limit=limit).strip()
    if not name or len(name.split()) != 1:
        raise BadOutput(f"crm_node -n printed no node name ({name[:60]!r})")
    return name


def verify(cib_file: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> tuple[bool, str]:
    """crm_verify on a saved CIB: (valid, messages). Only a missing/hung tool raises."""
    try:
        out = run(["crm_verify", "--verbose", "--xml-file", cib_file], deadline, limit=limit)
    except ToolFailed as err:
        return False, err.stderr
    return True, out.strip()


def verify_cib(root: etree._Element, deadline: Deadline,
               limit: float = DEFAULT_LIMIT) -> tuple[bool, str]:
    """verify() of a parsed CIB (written to a private temporary file)."""
    with tempfile.TemporaryDirectory(prefix="ravada-verify-") as tmp:
        path = os.path.join(tmp, "cib.xml")
        with open(path, "wb") as handle:
            handle.write(etree.tostring(root))
        return verify(path, deadline, limit)


def apply_change(old: etree._Element, new: etree._Element, deadline: Deadline,
                 limit: float = DEFAULT_LIMIT) -> bool:
    """Apply the difference old -> new to the CIB (live, or $CIB_file) as one patch: crm_diff
    computes it, cibadmin --patch applies it atomically.  Changes others made since `old`
    was read are kept; if they touched the same elements the whole patch is refused.
    False when there was nothing to change."""
    with tempfile.TemporaryDirectory(prefix="ravada-patch-") as tmp:
        paths = {name: os.path.join(tmp, f"{name}.xml") for name in ("old", "new", "patch")}
        for name, root in (("old", old), ("new", new)):
            with open(paths[name], "wb") as handle:
                handle.write(etree.tostring(root))
        # crm_diff exits 1 when the files differ, the case we want.
        patch = run(["crm_diff", "--no-version", "--original", paths["old"], "--new", paths["new"]],
                    deadline, ok_codes=(0, 1), limit=limit)
        if not patch.strip():
            return False
        try:
            diff = safexml.parse(patch, "output of crm_diff")
        except safexml.UnsafeXml as err:
            raise BadOutput(str(err)) from None
        # The digest pins the whole CIB, status included, which changes every few seconds.
        diff.attrib.pop("digest", None)
        with open(paths["patch"], "wb") as handle:
            handle.write(etree.tostring(diff))
        run(["cibadmin", "--patch", "--xml-file", paths["patch"]], deadline, limit=limit)
    return True


def set_node_attribute(name: str, value: str, deadline: Deadline, node: str | None = None,
                       lifetime: str = "forever", limit: float = DEFAULT_LIMIT) -> None:
    """crm_attribute: permanent (lifetime forever) or transient (reboot) node attribute."""
    argv = ["crm_attribute", "--type", "nodes", "--name", name, "--update", value, "--lifetime", lifetime]
    run(argv + (["--node", node] if node else []), deadline, limit=limit)


def set_node_utilization(name: str, value: str, deadline: Deadline, node: str | None = None,
                         limit: float = DEFAULT_LIMIT) -> None:
    argv = ["crm_attribute", "--type", "nodes", "--utilization", "--name", name, "--update", value]
    run(argv + (["--node", node] if node else []), deadline, limit=limit)


def set_utilization(resource: str, name: str, value: str, deadline: Deadline,
                    limit: float = DEFAULT_LIMIT) -> None:
    run(["crm_resource", "--resource", resource, "--utilization", "--set-parameter", name,
         "--parameter-value", value], deadline, limit=limit)


def delete_utilization(resource: str, name: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    run(["crm_resource", "--resource", resource, "--utilization", "--delete-parameter", name],
        deadline, limit=limit)


# -- reading a parsed CIB ---------------------------------------------------------------

def _values(parent: etree._Element | None, block: str, name: str) -> str | None:
    if parent is None:
        return None
    for nv in parent.iterfind(f"{block}/nvpair"):
        if nv.get("name") == name:
            return nv.get("value", "")
    return None


def node_attributes(cib: etree._Element, name: str) -> dict[str, str]:
    """Node name -> value of node attribute `name`, for every node that has it; a transient
    value (status/node_state/transient_attributes) wins over the permanent one."""
    result: dict[str, str] = {}
    names_by_id: dict[str, str] = {}
    for node in cib.iter("node"):
        uname = node.get("uname") or node.get("id")
        if not uname:
            continue
        if node.get("id"):
            names_by_id[node.get("id")] = uname
        value = _values(node, "instance_attributes", name)
        if value is not None:
            result[uname] = value
    for state in cib.iter("node_state"):
        uname = state.get("uname") or names_by_id.get(state.get("id") or "")
        value = _values(state, "transient_attributes/instance_attributes", name)
        if uname and value is not None:
            result[uname] = value
    return result


def node_attribute(cib: etree._Element, node: str, name: str) -> str | None:
    """The value Pacemaker uses for node attribute `name` on `node`, None when unset."""
    return node_attributes(cib, name).get(node)


def node_online(status: etree._Element, node: str) -> bool | None:
    """The node's online flag in crm_mon's XML, None when the node is not listed."""
    for entry in status.iterfind("nodes/node"):
        if entry.get("name") == node:
            return entry.get("online") == "true"
    return None


def resource_nodes(status: etree._Element, resource: str) -> list[str]:
    """The nodes where `resource` (a primitive, or every instance of a clone) is active, from
    crm_mon's XML (cluster_status); empty when it runs nowhere."""
    nodes = []
    for entry in status.iterfind(".//resources//resource"):
        if entry.get("id") == resource and entry.get("active") == "true":
            nodes += [n.get("name") for n in entry.iterfind("node") if n.get("name")]
    return nodes
