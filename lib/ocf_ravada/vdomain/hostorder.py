"""Host shutdown ordering on systemd hosts: Pacemaker must stop (and migrate VMs away)
before libvirt goes down, or a host shutdown kills the guests instead of moving them.

pacemaker.service is ordered after resource-agents-deps.target, so a runtime drop-in on that
target orders Pacemaker after libvirt: stopped before it at shutdown. The shell agent names
only libvirtd.service; the modular daemons (virtqemud, virtlogd, virtlockd) are named too,
since systemd ignores units that do not exist.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Callable

from ..deadline import Deadline
from ..log import Log

DROP_IN = "run/systemd/system/resource-agents-deps.target.d/99-ravada-libvirt.conf"
CONTENT = ("[Unit]\n"
           "After=libvirtd.service virtqemud.service virtlogd.service virtlockd.service\n"
           "Wants=virt-guest-shutdown.target\n")
Runner = Callable[[list[str], float], None]


def _systemctl(argv: list[str], timeout: float) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=max(0.1, timeout))


def ensure(deadline: Deadline, log: Log, root: str = "/", run: Runner = _systemctl) -> bool:
    """Install the drop-in once per boot (it lives in /run); True when it was written."""
    if not os.path.isdir(os.path.join(root, "run/systemd/system")):
        return False  # not booted with systemd
    path = os.path.join(root, DROP_IN)
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == CONTENT:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Several VMs start at once after a boot: each writes its own temporary file and renames
    # it into place atomically (a shared ".tmp" name would be renamed away under the others).
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".99-ravada-libvirt.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(CONTENT)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "start", "virt-guest-shutdown.target"]):
        try:
            run(argv, deadline.bounded(10))
        except (OSError, subprocess.SubprocessError) as err:
            # Ordering helps host shutdowns; it must never fail a VM start.
            log.warning(f"{' '.join(argv)} failed: {err}")
    log.info(f"host shutdown ordering installed: {path}")
    return True
