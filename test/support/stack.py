"""The rule that in CI a real-stack test never turns into a skip."""
import os
import shutil

import pytest


def require_stack(what: str, *binaries: str) -> None:
    """Skip on a developer machine without `binaries`; in CI (CI set) fail instead."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        message = f"{what} needs {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the real stack: install it with tools/install-deps)")
        pytest.skip(message)
    if os.geteuid() != 0:
        message = f"{what} needs root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
