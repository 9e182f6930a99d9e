"""The few CIB writes agents make, through Pacemaker's own tools.

Every call is bounded; a CIB that cannot be reached is reported to the caller, which
decides whether that matters (utilization updates never fail an action).
"""
from __future__ import annotations

import subprocess


class CibError(Exception):
    pass


def _run(argv: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=max(0.1, timeout))
    except FileNotFoundError as err:
        raise CibError(f"{argv[0]} is not installed") from err
    except subprocess.TimeoutExpired as err:
        raise CibError(f"{argv[0]} did not answer within {timeout:.1f}s") from err
    if done.returncode != 0:
        raise CibError(f"{' '.join(argv)}: {done.stderr.strip() or 'exit ' + str(done.returncode)}")
    return done.stdout


def set_utilization(resource: str, name: str, value: str, timeout: float) -> None:
    _run(["crm_resource", "--resource", resource, "--utilization",
          "--set-parameter", name, "--parameter-value", value], timeout)


def delete_utilization(resource: str, name: str, timeout: float) -> None:
    _run(["crm_resource", "--resource", resource, "--utilization",
          "--delete-parameter", name], timeout)


def set_node_attribute(name: str, value: str, timeout: float, node: str | None = None,
                       lifetime: str = "forever") -> None:
    argv = ["crm_attribute", "--type", "nodes", "--name", name, "--update", value,
            "--lifetime", lifetime]
    if node:
        argv += ["--node", node]
    _run(argv, timeout)


def set_node_utilization(name: str, value: str, timeout: float, node: str | None = None) -> None:
    argv = ["crm_attribute", "--type", "nodes", "--utilization", "--name", name, "--update", value]
    if node:
        argv += ["--node", node]
    _run(argv, timeout)
