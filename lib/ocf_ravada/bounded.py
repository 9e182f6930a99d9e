"""Run a blocking call with a time limit.

libvirt-python calls block in C with no per-call timeout; a hung libvirtd would hold the
agent until Pacemaker kills it (and a killed stop means fencing). The call runs in a daemon
thread instead; when the limit passes we stop waiting and report. The abandoned thread dies
with the process, which `agent.main` ends with os._exit.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

from .deadline import DeadlineExceeded

T = TypeVar("T")


def call(what: str, timeout: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    if timeout <= 0:
        raise DeadlineExceeded(f"no time left for {what}")
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=target, name=what, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise DeadlineExceeded(f"{what} did not return within {timeout:.1f}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
