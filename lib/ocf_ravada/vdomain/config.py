"""The domain's config file and its identity (name, UUID).

The identity is cached in the resource's state file keyed by the file's path, mtime and
size, so monitors do not parse XML, and stop/probe still know the domain when the file
cannot be read (shared storage gone, file removed) as long as it was read once on this
node since boot.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from ..ocf import OcfError, Rc
from ..statefile import StateFile


class Identity(NamedTuple):
    name: str
    uuid: str | None
    source: str  # where we learnt it, for log messages
    rbd: bool = False  # has RBD disks: worth a Ceph check


class ConfigUnreadable(Exception):
    pass


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigUnreadable(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigUnreadable(f"config file {path} cannot be read: {err}") from None


def parse(path: str, text: str):
    """The DomainConfig of `text`; a broken file is a configuration error (6)."""
    from ..virt import domxml

    try:
        return domxml.parse(text)
    except domxml.DomainXmlError as err:
        raise OcfError(Rc.ERR_CONFIGURED, f"config file {path} is not a usable domain XML: {err}") from None


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def resolve(config_path: str | None, domain_param: str | None, state: StateFile,
            strict: bool = True) -> Identity | None:
    """Who the domain is, from the cheapest source that is trustworthy; None if unknown.

    Strict (actions that change things): a broken config or a `domain` parameter that
    contradicts the config's <name> is a configuration error. Lenient (stop, probes): use
    what can be known, preferring the explicit `domain` parameter.
    """
    cached = state.load().get("identity") or {}
    stamp = _stamp(config_path) if config_path else None
    from_config: Identity | None = None
    if stamp is not None:
        if cached.get("config") == config_path and cached.get("stamp") == stamp:
            from_config = Identity(cached["name"], cached.get("uuid"), "config (cached)", cached.get("rbd", False))
        else:
            try:
                parsed = parse(config_path, read_text(config_path))
            except ConfigUnreadable:
                parsed = None
            except OcfError:
                if strict:
                    raise
                parsed = None
            if parsed is not None:
                from_config = Identity(parsed.name, parsed.uuid, "config", parsed.has_rbd)
                state.update(identity={"config": config_path, "stamp": stamp, "name": parsed.name,
                                       "uuid": parsed.uuid, "rbd": parsed.has_rbd})
    if domain_param:
        if strict and from_config is not None and from_config.name != domain_param:
            raise OcfError(Rc.ERR_CONFIGURED,
                           f"parameter domain={domain_param} does not match <name>{from_config.name}"
                           f"</name> in {config_path}")
        if from_config is not None and from_config.name == domain_param:
            uuid = from_config.uuid
        else:
            uuid = cached.get("uuid") if cached.get("name") == domain_param else None
        rbd = from_config.rbd if from_config is not None else bool(cached.get("rbd"))
        return Identity(domain_param, uuid, "domain parameter", rbd)
    if from_config is not None:
        return from_config
    if cached.get("name") and cached.get("config") == config_path:
        return Identity(cached["name"], cached.get("uuid"), "name cached when the config was last readable",
                        bool(cached.get("rbd")))
    return None
