"""Shared helpers for the placement tests (a plain module: test/conftest.py is the lead's)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
TOOL = TOP / "tools" / "ravada-place"
sys.path.insert(0, str(TOP / "lib"))
sys.path.insert(0, str(TOP / "placement"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def require_tools(*names: str) -> None:
    """A missing real stack fails under CI and skips elsewhere."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        message = f"missing Pacemaker tools: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def run_tool(*args: str, check: bool | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["/usr/bin/python3", str(TOOL), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def write_json(tmp_path: Path, nodes: list[dict], vms: list[dict]) -> str:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"nodes": nodes, "vms": vms}))
    return str(path)


def require_pacemaker_tools() -> None:
    require_tools("crm_simulate", "crm_verify", "crm_mon", "crm_diff", "cibadmin")
