"""The worker's report (a JSON state file in HA_RSCTMP) and how monitor reads it.

Per base, one state:
  verified        present, SHA-256 matches the manifest, published
  fetching        being copied (bytes, total, rate in bytes/s, eta in s, holder)
  waiting         not yet: its backing base is missing, or no holder could supply it this
                  pass (retried on the next one)
  kept            no longer wanted here, but a VM still uses it
  refused         not enough space (with `reserve`): the admin must act
  corrupt-in-use  the copy does not match the manifest and a VM uses it: not replaced
  source-missing  on the main node: the file is missing or does not match the manifest
The last three cannot be repaired by the agent: monitor fails with their reason.
"""
from __future__ import annotations

from typing import Any

UNREPAIRABLE = ("refused", "corrupt-in-use", "source-missing")
MIB = 1024 * 1024


def failures(status: dict[str, Any]) -> list[str]:
    """Reasons monitor must fail for, the manifest's first."""
    out = []
    manifest = status.get("manifest") or {}
    if manifest.get("invalid"):
        out.append(str(manifest.get("error") or "the manifest is invalid"))
    for name, base in sorted((status.get("bases") or {}).items()):
        if isinstance(base, dict) and base.get("state") in UNREPAIRABLE:
            out.append(f"base {name}: {base.get('reason') or base.get('state')}")
    return out


def summary(status: dict[str, Any]) -> str:
    """One line for the log and node attribute ravada-basesync-status."""
    bases = {n: b for n, b in (status.get("bases") or {}).items() if isinstance(b, dict)}
    wanted = [b for b in bases.values() if b.get("state") != "kept"]
    verified = sum(1 for b in wanted if b.get("state") == "verified")
    parts = [f"in sync {verified}/{len(wanted)}" if verified == len(wanted) else f"verified {verified}/{len(wanted)}"]
    for name, base in sorted(bases.items()):
        state = base.get("state")
        if state == "fetching":
            total = int(base.get("total") or 0)
            done = int(base.get("bytes") or 0)
            percent = done * 100 // total if total else 0
            eta = base.get("eta")
            parts.append(f"fetching {name} {done // MIB}/{total // MIB} MiB ({percent}%) "
                         f"{float(base.get('rate') or 0) / MIB:.1f} MiB/s"
                         + (f" eta {int(eta)}s" if eta is not None else "")
                         + (f" from {base.get('holder')}" if base.get("holder") else ""))
        elif state not in ("verified", None):
            parts.append(f"{name} {state}")
    error = (status.get("manifest") or {}).get("error")
    if error:
        parts.append(f"manifest: {error}")
    return "; ".join(parts)
