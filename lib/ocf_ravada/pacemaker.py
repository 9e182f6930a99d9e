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
    set_node_attribute / set_node_utilization
    set_resource_utilization(resource, values, deadline) -> bool   one patch, only what differs
    with_utilization(cib, {resource: values}) -> new CIB       the edit it makes (pure)
    query_node_attribute(name, deadline, node=, lifetime=) -> str | None
    delete_node_attribute(name, deadline, node=, lifetime=)
    set_option(section, name, value) / delete_option(section, name)   crm_config, rsc/op_defaults
    option(cib, section, name)                                 read one from a parsed CIB
    set_meta / delete_meta(resource, name)                     a resource's meta attribute
    set_param / delete_param(resource, name)                   a resource's instance attribute
    move_resource / ban_resource / clear_resource(resource, node)  crm_resource --move/--ban/--clear
    create_element(scope, element) -> bool                     cibadmin --create (False: id exists)
    delete_element(scope, element)                             cibadmin --delete
    local_node_name(deadline)                                  crm_node --name
    node_attribute(cib, node, name) / node_attributes(cib, name)   read a parsed CIB
    node_kinds(cib) -> {node: kind}                            every node: cluster, remote, container
    remote_connection(cib, node) -> primitive | None           a remote node's ocf:pacemaker:remote
    node_online(status, node)                                  from crm_mon's XML

Remote nodes (pacemaker_remote) have no <node> in the configuration until a permanent
attribute is set on them: their connection resource (ocf:pacemaker:remote, id = node name)
or a guest resource's meta remote-node declares them, and status holds them as
<node_state remote_node="true">.  node_kinds() finds them all.

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


def query_node_attribute(name: str, deadline: Deadline, node: str | None = None,
                         lifetime: str = "forever", limit: float = DEFAULT_LIMIT) -> str | None:
    """crm_attribute --query of one node attribute; None when it is not set."""
    argv = ["crm_attribute", "--type", "nodes", "--name", name, "--query", "--quiet", "--lifetime", lifetime]
    # 105 (CRM_EX_NOSUCH): no such attribute.
    try:
        return run(argv + (["--node", node] if node else []), deadline, limit=limit).strip()
    except ToolFailed as err:
        if err.returncode == 105:
            return None
        raise


def delete_node_attribute(name: str, deadline: Deadline, node: str | None = None,
                          lifetime: str = "forever", limit: float = DEFAULT_LIMIT) -> None:
    argv = ["crm_attribute", "--type", "nodes", "--name", name, "--delete", "--lifetime", lifetime]
    run(argv + (["--node", node] if node else []), deadline, limit=limit)


# Each option section's usual set (the ids pcs and crm_attribute use).
OPTION_SETS = {"crm_config": ("cluster_property_set", "cib-bootstrap-options"),
               "rsc_defaults": ("meta_attributes", "rsc_defaults-meta_attributes"),
               "op_defaults": ("meta_attributes", "op_defaults-meta_attributes")}


def _option_pair(cib: etree._Element, section: str, name: str) -> etree._Element | None:
    set_tag, _ = OPTION_SETS[section]
    for pair in cib.iterfind(f"configuration/{section}/{set_tag}/nvpair"):
        if pair.get("name") == name:
            return pair
    return None


def option(cib: etree._Element, section: str, name: str) -> str | None:
    """A cluster property or resource/operation default as set in a parsed CIB (None: unset)."""
    pair = _option_pair(cib, section, name)
    return None if pair is None else pair.get("value", "")


def set_option(section: str, name: str, value: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    """Set a cluster property (crm_config) or a resource/operation default: the existing pair
    of that name is updated, else one is added to the section's usual set.  (crm_attribute
    cannot set rsc_defaults/op_defaults on a CIB file; cibadmin can, live or saved alike.)"""
    set_tag, set_id = OPTION_SETS[section]
    pair = _option_pair(query_cib(deadline, limit), section, name)
    if pair is not None:
        set_id, pair_id = pair.getparent().get("id"), pair.get("id")
    else:
        pair_id = f"{set_id}-{name}"
    configuration = etree.Element("configuration")
    nv_set = etree.SubElement(etree.SubElement(configuration, section), set_tag, id=set_id)
    etree.SubElement(nv_set, "nvpair", id=pair_id, name=name, value=value)
    run(["cibadmin", "--modify", "--allow-create", "--scope", "configuration", "--xml-text",
         etree.tostring(configuration, encoding="unicode")], deadline, limit=limit)


def delete_option(section: str, name: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    pair = _option_pair(query_cib(deadline, limit), section, name)
    if pair is not None:
        delete_element("configuration", etree.Element("nvpair", id=pair.get("id")), deadline, limit)


def set_meta(resource: str, name: str, value: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    run(["crm_resource", "--resource", resource, "--meta", "--set-parameter", name,
         "--parameter-value", value], deadline, limit=limit)


def delete_meta(resource: str, name: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    # crm_resource exits 105 (no such object) when the attribute is not set: nothing to do.
    run(["crm_resource", "--resource", resource, "--meta", "--delete-parameter", name], deadline,
        ok_codes=(0, 105), limit=limit)


def set_param(resource: str, name: str, value: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    """An instance attribute (agent parameter) of a resource."""
    run(["crm_resource", "--resource", resource, "--set-parameter", name, "--parameter-value", value],
        deadline, limit=limit)


def delete_param(resource: str, name: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    run(["crm_resource", "--resource", resource, "--delete-parameter", name], deadline,
        ok_codes=(0, 105), limit=limit)


def move_resource(resource: str, node: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    """crm_resource --move: a cli-prefer constraint; with allow-migrate Pacemaker live-migrates."""
    run(["crm_resource", "--move", "--resource", resource, "--node", node], deadline, limit=limit)


def ban_resource(resource: str, node: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    """crm_resource --ban: a cli-ban-RESOURCE-on-NODE constraint."""
    run(["crm_resource", "--ban", "--resource", resource, "--node", node], deadline, limit=limit)


def clear_resource(resource: str, node: str, deadline: Deadline, limit: float = DEFAULT_LIMIT) -> None:
    """crm_resource --clear for one node: removes the --move/--ban constraints naming it."""
    run(["crm_resource", "--clear", "--resource", resource, "--node", node], deadline, limit=limit)


def create_element(scope: str, element: etree._Element, deadline: Deadline,
                   limit: float = DEFAULT_LIMIT) -> bool:
    """cibadmin --create: add `element` to the CIB section `scope` atomically; False when an
    element with its id exists already (the CIB manager refuses it as not unique)."""
    try:
        run(["cibadmin", "--create", "--scope", scope, "--xml-text", etree.tostring(element, encoding="unicode")],
            deadline, limit=limit)
    except ToolFailed as err:
        if err.returncode == 108:   # CRM_EX_EXISTS
            return False
        raise
    return True


def delete_element(scope: str, element: etree._Element, deadline: Deadline,
                   limit: float = DEFAULT_LIMIT) -> None:
    """cibadmin --delete of the element with the same tag and id (absent: nothing to do)."""
    run(["cibadmin", "--delete", "--scope", scope, "--xml-text", etree.tostring(element, encoding="unicode")],
        deadline, ok_codes=(0, 105), limit=limit)


def local_node_name(deadline: Deadline, limit: float = DEFAULT_LIMIT) -> str:
    return run(["crm_node", "--name"], deadline, limit=limit).strip()


def set_node_utilization(name: str, value: str, deadline: Deadline, node: str | None = None,
                         limit: float = DEFAULT_LIMIT) -> None:
    argv = ["crm_attribute", "--type", "nodes", "--utilization", "--name", name, "--update", value]
    run(argv + (["--node", node] if node else []), deadline, limit=limit)


def set_resource_utilization(resource: str, values: Mapping[str, str | None], deadline: Deadline,
                             limit: float = DEFAULT_LIMIT) -> bool:
    """Set (a value) or remove (None) utilization attributes of primitive `resource` in one
    CIB update, and only where the CIB differs: every configuration write makes the DC
    abort and recompute its transition, so a start must not cost three of them, nor a VM
    arriving on a node with the values already right cost any.  False: nothing to write."""
    cib = query_cib(deadline, limit=limit)
    return apply_change(cib, with_utilization(cib, {resource: values}), deadline, limit=limit)


def with_utilization(cib: etree._Element, changes: Mapping[str, Mapping[str, str | None]]) -> etree._Element:
    """A copy of `cib` where, for each primitive id in `changes`, its values are set in (None:
    removed from) the primitive's first utilization block, as crm_resource --utilization
    edits it; a block or nvpair that must be added gets an id no element has."""
    new = etree.fromstring(etree.tostring(cib))
    primitives = {p.get("id"): p for p in new.iter("primitive") if p.get("id") in changes}
    missing = sorted(set(changes) - set(primitives))
    if missing:
        raise PacemakerError(f"no primitive {', '.join(missing)} in the CIB")
    ids = {element.get("id") for element in new.iter() if element.get("id")}

    def fresh(base: str) -> str:
        candidate, number = base, 1
        while candidate in ids:
            number += 1
            candidate = f"{base}-{number}"
        ids.add(candidate)
        return candidate

    for resource, values in changes.items():
        primitive = primitives[resource]
        block = primitive.find("utilization")
        for name, value in values.items():
            pair = None if block is None else next((nv for nv in block.iterfind("nvpair")
                                                    if nv.get("name") == name), None)
            if value is None:
                if pair is not None:
                    block.remove(pair)
                continue
            if block is None:
                block = etree.SubElement(primitive, "utilization", id=fresh(f"{resource}-utilization"))
            if pair is None:
                pair = etree.SubElement(block, "nvpair", id=fresh(f"{block.get('id')}-{name}"), name=name)
            pair.set("value", value)
    return new


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


REMOTE_AGENT = ("ocf", "pacemaker", "remote")


def _agent(primitive: etree._Element) -> tuple[str | None, str | None, str | None]:
    return primitive.get("class"), primitive.get("provider"), primitive.get("type")


def node_kinds(cib: etree._Element) -> dict[str, str]:
    """Every node the CIB declares, name -> kind as rule attribute #kind names it: "cluster"
    (corosync members), "remote" (ocf:pacemaker:remote connection, named by its id) or
    "container" (guest node: a resource's meta remote-node).  Configuration order first,
    then remote and guest nodes without a <node> element, then nodes only status knows."""
    declared: dict[str, str] = {}
    resources = cib.find("configuration/resources")
    for primitive in resources.iter("primitive") if resources is not None else ():
        if _agent(primitive) == REMOTE_AGENT and primitive.get("id"):
            declared[primitive.get("id")] = "remote"
        guest = _values(primitive, "meta_attributes", "remote-node")
        if guest:
            declared[guest] = "container"
    kinds: dict[str, str] = {}
    for node in cib.iterfind("configuration/nodes/node"):
        name = node.get("uname") or node.get("id")
        if name:
            kinds[name] = declared.get(name) or ("remote" if node.get("type") == "remote" else "cluster")
    for name, kind in declared.items():
        kinds.setdefault(name, kind)
    for state in cib.iterfind("status/node_state"):
        name = state.get("uname") or state.get("id")
        if name and state.get("remote_node") == "true":
            kinds.setdefault(name, "remote")
    return kinds


def remote_connection(cib: etree._Element, node: str) -> etree._Element | None:
    """The ocf:pacemaker:remote primitive that connects remote node `node` (None: the node
    is a cluster node, a guest node or unknown)."""
    resources = cib.find("configuration/resources")
    for primitive in resources.iter("primitive") if resources is not None else ():
        if primitive.get("id") == node and _agent(primitive) == REMOTE_AGENT:
            return primitive
    return None


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
