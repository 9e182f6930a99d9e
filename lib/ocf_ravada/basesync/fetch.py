"""One base from the best holder: a pipelined chain, re-chained when a holder fails.

The nodes that want a base form a chain: the main node, then the others in name order.
Each node appends from its predecessor's copy, even while that copy is still arriving there
(its temporary file under .basesync/incoming/), so every byte crosses each link once and all
links carry data at the same time: the time to reach N nodes stays close to one copy's time
instead of growing with N (a star from the main node) or log2 N (a tree).

A holder that cannot be reached, has no copy, or makes no progress for `stall_timeout`
seconds is left for the next candidate: any node with a verified copy (node attribute
ravada-base-<name> equal to the manifest's digest), the main node, then the nodes further up
the chain. The temporary copy stays across holders and restarts, so nothing is sent twice.
The copy is used only when its SHA-256 matches the manifest.

Pacing: a node behind another in the chain cannot catch up with it (both links have the same
rate), and each of its rsync runs starts a little behind; the lag adds up along the chain. So
a node that reads a complete copy while nodes follow it copies at `pace` (e.g. 0.8) of the
rate it measured in its first seconds: the followers then close the gap on every run.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

from . import verify
from .manifest import Base
from .transfer import Pulled, SshOptions, pull

INCOMING = ".basesync/incoming"
WAIT = 0.2       # between two runs that found nothing new
MEASURE = 4.0    # seconds of full-speed copying that measure the link before pacing


class FetchFailed(Exception):
    """No holder could supply a verified copy; the message names what each one did."""


class NoSpaceLeft(Exception):
    """The directory filled up while receiving."""


def temporary_name(base: Base) -> str:
    """Where a copy of `base` grows (relative to the directory): named by its digest, so every
    node finds its peers' copy and a copy of another version is never appended to."""
    return f"{INCOMING}/{base.sha256}"


def candidates(me: str, source: str, chain: list[str], verified: set[str]) -> list[str]:
    """Holders to try, best first: my predecessor in the chain, nodes with a verified copy,
    the main node, then the rest of the chain before me, nearest first."""
    order: list[str] = []
    if me in chain:
        before = chain[:chain.index(me)]
        order += before[-1:]
    order += sorted(verified)
    order.append(source)
    if me in chain:
        order += list(reversed(chain[:chain.index(me)]))
    seen: set[str] = set()
    return [n for n in order if n != me and not (n in seen or seen.add(n))]


@dataclasses.dataclass
class Progress:
    bytes: int = 0
    total: int = 0
    holder: str = ""
    resumed_from: int = 0     # bytes already here when the current holder started


class Fetcher:
    """Fetches one base into `directory` (the caller checked space and that replacing an
    existing file of that name is allowed)."""

    def __init__(self, base: Base, directory: str, options: SshOptions, address: Callable[[str], str],
                 source: str, stall_timeout: float, report: Callable[[Progress], None],
                 stop: Callable[[], bool], pace: float = 0.0, followed: bool = False,
                 clock=time.monotonic, sleep=time.sleep) -> None:
        self.base = base
        self.directory = directory
        self.options = options
        self.address = address
        self.source = source
        self.stall_timeout = stall_timeout
        self.report = report
        self.stop = stop
        self.pace = pace
        self.followed = followed
        self.clock = clock
        self.sleep = sleep
        self.temporary = os.path.join(directory, temporary_name(base))
        self.final = os.path.join(directory, base.file)
        self.digest = verify.GrowingDigest(self.temporary)
        self.progress = Progress(total=base.size)
        self.outcomes: list[str] = []     # why holders before the last one did not do

    def run(self, holders: list[str], verified: set[str]) -> str:
        """Fetch, verify and install; the holder the last bytes came from."""
        os.makedirs(os.path.dirname(self.temporary), mode=0o755, exist_ok=True)
        outcomes = self.outcomes
        for holder in holders:
            if self.stop():
                raise FetchFailed("stopped")
            outcome = self._from(holder, holder in verified or holder == self.source)
            if outcome is None:
                verify.install(self.temporary, self.final)
                return holder
            outcomes.append(f"{holder}: {outcome}")
        raise FetchFailed(f"no holder supplied base {self.base.name} ({'; '.join(outcomes) or 'no holder known'})")

    def _size(self) -> int:
        try:
            return os.lstat(self.temporary).st_size
        except FileNotFoundError:
            return 0

    def _tick(self) -> None:
        self.progress.bytes = self.digest.update()
        self.report(self.progress)

    def _from(self, holder: str, verified: bool) -> str | None:
        """None once a verified copy is in place, else why this holder did not do."""
        self.progress.holder = holder
        self.progress.resumed_from = self._size()
        paths = [self.base.file, temporary_name(self.base)]
        if not verified:
            paths.reverse()    # a peer still receiving: its temporary copy first
        last_growth = self.clock()
        limit = self._paced_limit(holder, paths[0]) if verified and self.followed and self.pace else None
        while True:
            size = self._size()
            if size >= self.base.size:
                return self._check(holder)
            result = self._run(holder, paths[0], limit)
            if result.missing:
                result = self._run(holder, paths[1], limit)
                if not result.missing:
                    paths.reverse()
            if result.no_space:
                raise NoSpaceLeft(result.reason)
            if result.unreachable:
                return f"unreachable ({result.reason})"
            if not result.ok and not result.missing:
                return f"failed ({result.reason})"
            self._tick()
            if self._size() > size:
                last_growth = self.clock()
            elif self.clock() - last_growth > self.stall_timeout:
                return "no copy" if result.missing else f"no progress for {self.stall_timeout:.0f}s"
            else:
                self.sleep(WAIT)
            if self.stop():
                return "stopped"

    def _run(self, holder: str, path: str, limit_kib: int | None = None, stop=None) -> Pulled:
        options = self.options
        if limit_kib and (not options.bwlimit_kib or limit_kib < options.bwlimit_kib):
            options = dataclasses.replace(options, bwlimit_kib=limit_kib)
        return pull(options, self.address(holder), path, self.temporary,
                    while_running=self._tick, stop=stop or self.stop)

    def _paced_limit(self, holder: str, path: str) -> int | None:
        """Copy about MEASURE seconds at full speed; the KiB/s limit that paces the rest (None:
        the copy ended meanwhile or nothing was measured). The rate is taken over the second
        half of the window, once the connection is set up and TCP has ramped up."""
        started = self.clock()
        samples: list[tuple[float, int]] = []    # (time, size) from the first byte on

        def measured_enough() -> bool:
            size = self._size()
            if samples or size > 0:
                samples.append((self.clock(), size))
            return self.stop() or bool(samples) and samples[-1][0] - samples[0][0] > MEASURE \
                or self.clock() - started > MEASURE + self.stall_timeout

        self._run(holder, path, stop=measured_enough)
        if len(samples) < 3 or self._size() >= self.base.size:
            return None
        middle = samples[0][0] + (samples[-1][0] - samples[0][0]) / 2
        start = next(s for s in samples if s[0] >= middle)
        gained, elapsed = samples[-1][1] - start[1], samples[-1][0] - start[0]
        if gained <= 0 or elapsed <= 0:
            return None
        return max(1, int(gained / elapsed * self.pace / 1024))

    def _check(self, holder: str) -> str | None:
        self._tick()
        if self._size() == self.base.size and self.digest.hexdigest() == self.base.sha256:
            return None
        # The bytes hashed while growing may not be what is on disk now: hash once more.
        if self._size() == self.base.size and verify.file_digest(self.temporary) == self.base.sha256:
            return None
        os.unlink(self.temporary)
        self.digest = verify.GrowingDigest(self.temporary)
        self.progress.resumed_from = 0
        return "copy did not match the manifest's SHA-256 (discarded)"
