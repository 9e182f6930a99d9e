"""Writing the domain's definition back to its config file, and the disk overlay for
backingfile/stateless — the two places the agent writes admin files, both careful."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import libvirt

from .. import bounded
from ..deadline import Deadline, DeadlineExceeded
from ..log import Log
from ..ocf import OcfError, Rc
from ..virt.connection import Hypervisor
from .config import ConfigUnreadable, read_text

# Longest wait for writing the saved definition.
WRITE_LIMIT = 10.0


def save_config(hv: Hypervisor, dom: libvirt.virDomain, path: str, sync: bool,
                deadline: Deadline, log: Log) -> None:
    """Replace `path` with the domain's definition, only when it changed and parses. A
    definition with passwords is written 0600, whatever the old file's mode was."""
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    xml = hv.call("reading the domain definition", dom.XMLDesc, flags, limit=10)
    try:
        current = read_text(path, deadline)
    except ConfigUnreadable as err:
        if not err.missing:
            # Not a regular file, or its storage does not answer: leave it alone.
            log.warning(f"not saving the domain definition: {err}")
            return
        current = None
    if xml == current:
        return
    from ..virt import domxml  # lxml: only when a definition is saved

    try:
        secret = domxml.parse(xml).has_secrets
    except domxml.DomainXmlError as err:
        log.warning(f"not saving the domain definition to {path}: {err}")
        return
    try:
        # Bounded: a stop must not hang on the config's storage (it would end in fencing).
        bounded.call(f"saving {path}", deadline.bounded(WRITE_LIMIT), _replace, path, xml,
                     current is not None, secret)
    except (OSError, DeadlineExceeded) as err:
        log.warning(f"could not save the domain definition to {path}: {err}")
        return
    log.info(f"saved the changed domain definition to {path}")
    if sync:
        try:
            subprocess.run(["csync2", "-x", path], check=True, capture_output=True,
                           timeout=max(0.1, deadline.bounded(30)))
        except (OSError, subprocess.SubprocessError) as err:
            log.warning(f"csync2 -x {path} failed: {err}")


def _replace(path: str, text: str, existed: bool, secret: bool) -> None:
    """Atomically replace `path` by `text`, keeping its owner and (unless `secret`) its mode."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".ravada-save-")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if existed:
            if not secret:
                shutil.copymode(path, tmp)
            st = os.stat(path)
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def overlay_path(config: str) -> str:
    return os.path.splitext(config)[0] + ".qcow2"


def prepare_overlay(config: str, backing: str, stateless: bool, copyindirs: str,
                    deadline: Deadline, log: Log) -> None:
    overlay = overlay_path(config)
    if stateless and os.path.exists(overlay):
        os.unlink(overlay)
    if not os.path.exists(overlay):
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, overlay],
             deadline, "creating the overlay")
        log.info(f"created overlay {overlay} on {backing}")
        for directory in copyindirs.split() if stateless else ():
            _run(["virt-copy-in", "-a", overlay, directory, "/"], deadline, f"copying {directory} into the guest")


def _run(argv: list[str], deadline: Deadline, what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=max(0.1, deadline.remaining()))
    except FileNotFoundError:
        raise OcfError(Rc.ERR_INSTALLED, f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise OcfError(Rc.ERR_GENERIC, f"{what}: {argv[0]} did not finish in time") from None
    if done.returncode != 0:
        raise OcfError(Rc.ERR_GENERIC, f"{what} failed: {done.stderr.strip()}")
