"""The domain's config file and its identity (name, UUID).

The identity is cached in the resource's state file keyed by the file's path, mtime and
size, so monitors do not parse XML, and stop/probe still know the domain when the file
cannot be read (shared storage gone, file removed) as long as it was read once on this
node since boot.
"""
from __future__ import annotations

import os
import stat
from typing import NamedTuple

from .. import bounded
from ..deadline import Deadline, DeadlineExceeded
from ..ocf import OcfError, Rc
from ..statefile import StateFile

# A domain XML is a few KiB; even one with hundreds of disks stays far below this.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Longest wait for the config's storage (a hung NFS share must not eat the whole action).
READ_LIMIT = 10.0


class Identity(NamedTuple):
    name: str
    uuid: str | None
    source: str  # where we learnt it, for log messages
    rbd: bool = False  # has RBD disks: worth a Ceph check


class ConfigUnreadable(Exception):
    """The config cannot be used; `rc` is the OCF code for actions that need it: 5 when it is
    missing or its storage does not answer, 6 when it is the wrong kind of file."""

    def __init__(self, reason: str, rc: Rc = Rc.ERR_INSTALLED, missing: bool = False) -> None:
        super().__init__(reason)
        self.rc = rc
        self.missing = missing  # it does not exist (rather than cannot be read)


def _read(path: str) -> str:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; only regular files are read.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigUnreadable(f"config file {path} does not exist", missing=True) from None
    except OSError as err:
        raise ConfigUnreadable(f"config file {path} cannot be read: {err.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigUnreadable(f"config file {path} is not a regular file", Rc.ERR_CONFIGURED)
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 1024 * 1024)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise ConfigUnreadable(f"config file {path} cannot be read: {err.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigUnreadable(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB",
                               Rc.ERR_CONFIGURED)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigUnreadable(f"config file {path} is not UTF-8 text: {err.reason} at byte {err.start}",
                               Rc.ERR_CONFIGURED) from None


def read_text(path: str, deadline: Deadline) -> str:
    """The config's text: a regular file, at most MAX_CONFIG_BYTES, read within the deadline."""
    try:
        return bounded.call(f"reading {path}", deadline.bounded(READ_LIMIT), _read, path)
    except DeadlineExceeded as err:
        raise ConfigUnreadable(f"config file {path} unreadable: {err}") from None


def parse(path: str, text: str):
    """The DomainConfig of `text`; a broken file is a configuration error (6)."""
    from ..virt import domxml

    try:
        return domxml.parse(text)
    except domxml.DomainXmlError as err:
        raise OcfError(Rc.ERR_CONFIGURED, f"config file {path} is not a usable domain XML: {err}") from None


def _stamp(path: str, deadline: Deadline) -> list[int] | None:
    try:
        st = bounded.call(f"stat {path}", deadline.bounded(READ_LIMIT), os.stat, path)
    except (OSError, DeadlineExceeded):
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def resolve(config_path: str | None, domain_param: str | None, state: StateFile,
            deadline: Deadline, strict: bool = True) -> Identity | None:
    """Who the domain is, from the cheapest source that is trustworthy; None if unknown.

    Strict (actions that change things): a broken config or a `domain` parameter that
    contradicts the config's <name> is a configuration error. Lenient (stop, probes): the
    `domain` parameter or the name cached when this node last read the config, without
    touching the config (its storage may hang); the config only when neither is known.
    """
    cached = state.load().get("identity") or {}
    if not strict:
        if domain_param:
            same = cached.get("name") == domain_param
            return Identity(domain_param, cached.get("uuid") if same else None, "domain parameter",
                            bool(cached.get("rbd")))
        if cached.get("name") and cached.get("config") == config_path:
            return Identity(cached["name"], cached.get("uuid"), "name cached when the config was last read",
                            bool(cached.get("rbd")))
    stamp = _stamp(config_path, deadline) if config_path else None
    from_config: Identity | None = None
    if stamp is not None:
        if cached.get("config") == config_path and cached.get("stamp") == stamp:
            from_config = Identity(cached["name"], cached.get("uuid"), "config (cached)", cached.get("rbd", False))
        else:
            try:
                parsed = parse(config_path, read_text(config_path, deadline))
            except ConfigUnreadable as err:
                if strict and err.rc == Rc.ERR_CONFIGURED:
                    raise OcfError(err.rc, str(err)) from None
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
