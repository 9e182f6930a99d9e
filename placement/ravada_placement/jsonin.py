"""Read a Cluster from a JSON description (planning without a cluster).

{
  "nodes": [{"name": "n1", "cpu": 16, "hv_memory": 65536, "bases": ["win10"],
             "unavailable": null}],
  "vms":   [{"name": "vm1", "cpu": 2, "hv_memory": 4096, "user": "alice", "base": "win10",
             "node": null, "banned": [], "priority": 0}]
}
"""
from __future__ import annotations

import json
import re

from .cib import BASE_NAME
from .inputs import JSON_LIMIT, read_regular_file
from .model import SCORE_INFINITY, VM, Cluster, InputError, Node, require_int


def _object(value: object, where: str, required: set[str], optional: set[str]) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected an object")
    missing = required - value.keys()
    if missing:
        raise InputError(f"{where}: missing {', '.join(sorted(missing))}")
    unknown = value.keys() - required - optional
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    return value


# Names end up in XML attributes and ids: printable text, no control characters.
NAME = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]{1,200}")


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or not NAME.fullmatch(value):
        raise InputError(f"{where}: name must be a non-empty string of at most 200 printable characters")
    return value


def _reject_constant(text: str) -> None:
    raise InputError(f"{text} is not a number JSON allows")


def _string_list(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise InputError(f"{where}: expected a list of strings")
    return frozenset(_name(item, where) for item in value)


def cluster_from_json(data: str, origin: str) -> Cluster:
    try:
        doc = json.loads(data, parse_constant=_reject_constant)
    except InputError as err:
        raise InputError(f"{origin}: {err}") from None
    except (ValueError, RecursionError) as err:      # JSONDecodeError, too many digits, too deep
        raise InputError(f"{origin}: not valid JSON: {' '.join(str(err).split())[:200]}") from None
    doc = _object(doc, origin, {"nodes", "vms"}, set())
    if not isinstance(doc["nodes"], list) or not isinstance(doc["vms"], list):
        raise InputError(f"{origin}: nodes and vms must be lists")
    cluster = Cluster()
    for i, raw in enumerate(doc["nodes"]):
        where = f"{origin}: nodes[{i}]"
        item = _object(raw, where, {"name", "cpu", "hv_memory"}, {"bases", "unavailable"})
        name = _name(item["name"], where)
        if name in cluster.nodes:
            raise InputError(f"{where}: duplicate node {name!r}")
        unavailable = item.get("unavailable")
        if unavailable is not None:
            _name(unavailable, f"{where}.unavailable")
        cluster.nodes[name] = Node(name, require_int(item["cpu"], f"node {name} cpu"),
                                   require_int(item["hv_memory"], f"node {name} hv_memory"),
                                   _string_list(item.get("bases", []), f"{where}.bases"), unavailable)
    for i, raw in enumerate(doc["vms"]):
        where = f"{origin}: vms[{i}]"
        item = _object(raw, where, {"name", "cpu", "hv_memory"}, {"user", "base", "node", "banned", "priority"})
        name = _name(item["name"], where)
        if name in cluster.vms:
            raise InputError(f"{where}: duplicate VM {name!r}")
        for key in ("user", "base", "node"):
            if item.get(key) is not None:
                _name(item[key], f"{where}.{key}")
        if item.get("base") and not BASE_NAME.match(item["base"]):
            raise InputError(f"{where}: invalid base name {item['base']!r}")
        banned = _string_list(item.get("banned", []), f"{where}.banned")
        unknown = banned - cluster.nodes.keys()
        if unknown:
            raise InputError(f"{where}: banned from unknown node(s) {', '.join(sorted(unknown))}")
        priority = item.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > SCORE_INFINITY:
            raise InputError(f"{where}: priority must be an integer between -{SCORE_INFINITY} and {SCORE_INFINITY}")
        cluster.vms[name] = VM(name, require_int(item["cpu"], f"VM {name} cpu"),
                               require_int(item["hv_memory"], f"VM {name} hv_memory"),
                               item.get("user") or None, item.get("base") or None, item.get("node"), banned,
                               priority=priority)
    cluster.validate()
    return cluster


def load_json(path: str) -> Cluster:
    try:
        data = read_regular_file(path, JSON_LIMIT).decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"cannot read {path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    return cluster_from_json(data, path)
