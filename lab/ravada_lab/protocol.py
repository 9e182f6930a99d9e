"""The controller's wire protocol: one JSON request line, one JSON answer line, on a unix socket.

The socket lives in the lab directory, which every node sees at the same path, so the fence
agent inside a node reaches the controller like a real one reaches its IPMI/PDU.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .errors import LabError

NODE_OPS = ("on", "off", "reboot", "status", "freeze", "thaw", "cut", "heal", "exec")
LAB_OPS = ("ping", "state", "boot", "shutdown", "shape")


def request(control_socket: Path, op: str, timeout: float = 120.0, **args: Any) -> dict:
    """Send one request; return the answer's data or raise LabError with the controller's words."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(control_socket))
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            answer = s.makefile("rb").readline()
    except FileNotFoundError:
        raise LabError(f"no lab controller at {control_socket} (is the lab up?)") from None
    except (ConnectionRefusedError, socket.timeout, OSError) as e:
        raise LabError(f"lab controller at {control_socket} not answering: {e}") from None
    if not answer:
        raise LabError("lab controller closed the connection without an answer")
    reply = json.loads(answer)
    if not reply.get("ok"):
        raise LabError(reply.get("error", "unknown controller error"))
    return reply.get("data", {})
