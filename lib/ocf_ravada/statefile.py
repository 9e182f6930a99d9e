"""Small per-resource state kept in HA_RSCTMP (a tmpfs: it is gone after a reboot).

Used for what must survive between actions on one node but is cheap to lose: the domain
identity learnt at start (so stop and probes work when the config file is unreadable) and
the utilization last written to the CIB (so monitors write only on change).
"""
from __future__ import annotations

import json
import os
from typing import Any


class StateFile:
    def __init__(self, directory: str, agent: str, resource: str) -> None:
        self.path = os.path.join(directory, f"{agent}-{resource}.state")
        self._data: dict[str, Any] | None = None  # read once per action; Pacemaker never
        # runs two actions of one resource on one node at the same time

    def load(self) -> dict[str, Any]:
        if self._data is None:
            try:
                with open(self.path, encoding="utf-8") as handle:
                    data = json.load(handle)
            except (OSError, ValueError):
                data = {}
            self._data = data if isinstance(data, dict) else {}
        return dict(self._data)

    def save(self, data: dict[str, Any]) -> None:
        """Atomic replace, so a concurrent reader never sees half a file."""
        import tempfile  # writes are rare; monitors only read

        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self._data = dict(data)

    def update(self, **changes: Any) -> dict[str, Any]:
        data = self.load()
        data.update(changes)
        self.save(data)
        return data

    def remove(self) -> None:
        self._data = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
