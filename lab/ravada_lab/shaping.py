"""Link shaping: each node's cable limited to one rate, both ways, with tc.

A node's cable is a veth: `eth0` in the node, its peer `p-NODE` on the lab switch.  What the
node sends leaves through `eth0`, what it receives leaves the switch through `p-NODE`; an HTB
root qdisc with one class at RATE on each end limits the node's egress and its ingress to
RATE, like a NIC (or a switch port) of that speed.  The qdiscs live in the node's and the
switch's network namespaces and go with them.
"""

from __future__ import annotations

import re
import subprocess

from .errors import LabError

# tc's rate units (bits or bytes per second, decimal prefixes), as `tc` itself accepts them.
_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
          "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}
_RATE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([a-z]+)")
MIN_RATE = 8_000           # 8 kbit/s: below, TCP handshakes time out
MAX_RATE = 100 * 10**9     # 100 gbit/s


def parse_rate(text: str) -> int:
    """A tc rate ('200mbit', '1gbit', '50mbps') in bits per second; LabError when invalid."""
    match = _RATE_RE.fullmatch(text.strip().lower())
    if not match or match.group(2) not in _UNITS:
        raise LabError(f"invalid link rate {text!r}: a number and one of "
                       f"{', '.join(_UNITS)} (e.g. 200mbit)")
    bits = int(float(match.group(1)) * _UNITS[match.group(2)])
    if not MIN_RATE <= bits <= MAX_RATE:
        raise LabError(f"invalid link rate {text!r}: between 8kbit and 100gbit")
    return bits


def apply(tc: list[str], device: str, bits: int | None) -> None:
    """Limit `device`'s egress to `bits` per second (None: remove the limit).

    `tc` is the command prefix that reaches the device's namespace."""
    if bits is None:
        # No root qdisc to delete is fine: the link was not shaped.
        subprocess.run(tc + ["qdisc", "del", "dev", device, "root"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return
    _tc(tc + ["qdisc", "replace", "dev", device, "root", "handle", "1:", "htb", "default", "1"])
    # quantum: one class only, so fairness does not matter; a fixed one spares the kernel's
    # "quantum is big" warning at high rates.
    _tc(tc + ["class", "replace", "dev", device, "parent", "1:", "classid", "1:1", "htb",
              "rate", f"{bits}bit", "ceil", f"{bits}bit", "quantum", "60000"])


def _tc(argv: list[str]) -> None:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode:
        raise LabError(f"{' '.join(argv)} failed (rc {result.returncode}): "
                       f"{result.stderr.strip()}")
