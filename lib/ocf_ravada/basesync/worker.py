"""The background worker `start` launches: reconciles this node's bases with the manifest.

One pass:
  1. the manifest: read on the main node; elsewhere copied from the main node (kept in
     .basesync/manifest.json, used as is when the main node cannot be reached);
  2. every copy here is checked: unchanged since verified (same inode, size and times as in
     .basesync/ledger.json) or hashed again (always, after a depth-20 monitor asked);
  3. bases no longer wanted here are deleted, unless a VM uses them;
  4. missing or wrong copies are fetched (fetch.py), backing bases first, after a space check;
     a wrong copy a VM uses is never replaced;
  5. ravada-base-<name> is published for verified copies only and withdrawn for the others.
Then it sleeps poll_interval seconds (SIGUSR1: re-hash everything now). SIGTERM stops it.
Run: python3 -m ocf_ravada.basesync.worker CONFIG.json
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from ..deadline import Deadline
from ..log import Log
from ..statefile import StateFile
from . import inuse, space, verify
from .cluster import Cluster, PacemakerCluster, StandaloneCluster
from .fetch import INCOMING, FetchFailed, Fetcher, NoSpaceLeft, candidates, temporary_name
from .manifest import MANIFEST_FILE, Base, Manifest, ManifestError, parse
from .status import summary
from .transfer import RateMeter, SshOptions, close_shared, pull

LEDGER_FILE = ".basesync/ledger.json"
IN_USE_LIMIT = 120.0
STATUS_ATTRIBUTE_EVERY = 10.0


@dataclasses.dataclass(frozen=True)
class Config:
    node: str
    source: str
    directory: str
    resource: str
    ssh: SshOptions
    hosts: dict[str, str]
    reserve_mib: int
    concurrency: int
    poll_interval: int
    stall_timeout: int
    pace_percent: int
    hypervisor: str | None
    in_cluster: bool
    state_dir: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Config":
        return cls(**{**data, "ssh": SshOptions(**data["ssh"])})

    def address(self, node: str) -> str:
        return self.hosts.get(node, node)

    @property
    def is_source(self) -> bool:
        return self.node == self.source


def status_file(state_dir: str, resource: str) -> StateFile:
    return StateFile(state_dir, "basesync-status", resource)


class Worker:
    def __init__(self, config: Config, cluster: Cluster, log: Log) -> None:
        self.config = config
        self.cluster = cluster
        self.log = log
        self.directory = config.directory
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.rehash_requested = False
        self.lock = threading.Lock()
        self.status: dict[str, Any] = {"pid": os.getpid(), "bases": {}, "manifest": {}, "rehashed": 0,
                                       "passes": 0}
        self.statefile = status_file(config.state_dir, config.resource)
        self._status_attribute_at = 0.0
        self.contacted: set[str] = set()

    def address(self, node: str) -> str:
        address = self.config.address(node)
        self.contacted.add(address)
        return address

    def close(self) -> None:
        for address in sorted(self.contacted):
            close_shared(self.config.ssh, address)

    # -- the loop -------------------------------------------------------------------------

    def run_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                self.run_pass()
            except Exception as err:   # a bug or an odd file system: say so, try again later
                import traceback

                self.log.error("pass failed: " + "".join(traceback.format_exception(err)).strip())
            self.wake.wait(self.config.poll_interval)
            self.wake.clear()

    def run_pass(self) -> None:
        rehash, self.rehash_requested = self.rehash_requested, False
        manifest = self.load_manifest()
        if manifest is not None:
            self.cluster.refresh()
            self.reconcile(manifest, rehash)
        if rehash:
            self.status["rehashed"] = int(self.status.get("rehashed", 0)) + 1
        self.status["passes"] = int(self.status.get("passes", 0)) + 1
        self.save(force_attribute=True)

    def save(self, force_attribute: bool = False) -> None:
        with self.lock:
            self.status["updated"] = time.time()
            snapshot = json.loads(json.dumps(self.status))
            self.statefile.save(snapshot)
        now = time.monotonic()
        if force_attribute or now - self._status_attribute_at > STATUS_ATTRIBUTE_EVERY:
            self._status_attribute_at = now
            self.cluster.set_status(summary(snapshot)[:200])

    def set_base(self, name: str, **fields: Any) -> None:
        with self.lock:
            self.status["bases"][name] = fields

    # -- manifest -------------------------------------------------------------------------

    def path(self, relative: str) -> str:
        return os.path.join(self.directory, relative)

    def load_manifest(self) -> Manifest | None:
        local = self.path(MANIFEST_FILE)
        if not self.config.is_source:
            os.makedirs(os.path.dirname(local), mode=0o755, exist_ok=True)
            fresh = local + ".new"
            result = pull(self.config.ssh, self.address(self.config.source), MANIFEST_FILE, fresh,
                          append=False, max_size=1024 * 1024, stop=self.stopping.is_set)
            if result.ok:
                try:
                    with open(fresh, "rb") as handle:
                        parse(handle.read(1024 * 1024 + 1))
                    os.replace(fresh, local)
                except (OSError, ManifestError) as err:
                    self.log.error(f"manifest from {self.config.source} refused: {err}")
                    self._manifest_status(error=f"manifest from {self.config.source} refused: {err}", invalid=True)
                    return None
            else:
                self.log.warning(f"manifest not copied from {self.config.source}: {result.reason}; "
                                 "using the last copy")
        try:
            with open(local, "rb") as handle:
                manifest = parse(handle.read(1024 * 1024 + 1))
        except FileNotFoundError:
            self._manifest_status(error=f"no manifest yet ({MANIFEST_FILE} on {self.config.source})",
                                  invalid=self.config.is_source)
            return None
        except (OSError, ManifestError) as err:
            self._manifest_status(error=f"manifest {local}: {err}", invalid=True)
            return None
        self._manifest_status(serial=manifest.serial)
        return manifest

    def _manifest_status(self, **fields: Any) -> None:
        with self.lock:
            self.status["manifest"] = fields

    # -- ledger: what we verified, and how the file looked then -----------------------------

    def load_ledger(self) -> dict[str, Any]:
        try:
            with open(self.path(LEDGER_FILE), "rb") as handle:
                data = json.loads(handle.read(4 * 1024 * 1024))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError, RecursionError):
            return {}

    def save_ledger(self, ledger: dict[str, Any]) -> None:
        path = self.path(LEDGER_FILE)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path + ".new", "w", encoding="utf-8") as handle:
            json.dump(ledger, handle)
        os.replace(path + ".new", path)

    # -- reconciling ----------------------------------------------------------------------

    def reconcile(self, manifest: Manifest, rehash: bool) -> None:
        wanted = manifest.bases if self.config.is_source else tuple(manifest.wanted_on(self.config.node))
        wanted_names = {b.name for b in wanted}
        ledger = self.load_ledger()
        in_use = InUse(self, manifest)
        good: dict[str, Base] = {}
        to_fetch: list[Base] = []
        for base in wanted:
            state = self.check_copy(base, ledger, rehash)
            if state == "verified":
                good[base.name] = base
            elif state == "missing" or (state == "wrong" and not in_use.uses(base.file)):
                if self.config.is_source:
                    self.set_base(base.name, state="source-missing",
                                  reason=f"{base.file} is {'missing' if state == 'missing' else 'not the manifest’s SHA-256'} on the main node")
                else:
                    to_fetch.append(base)
            else:
                self.set_base(base.name, state="corrupt-in-use",
                              reason=f"{base.file} does not match the manifest and {in_use.reason(base.file)}: not replaced")
        self.drop_unwanted(manifest, wanted_names, ledger, in_use)
        self.save_ledger(ledger)
        self.publish(good, wanted_names)
        self.save()
        if to_fetch:
            self.fetch_all(to_fetch, manifest, good, ledger)

    def check_copy(self, base: Base, ledger: dict[str, Any], rehash: bool) -> str:
        """verified | missing | wrong, for this node's copy of `base`."""
        path = self.path(base.file)
        seen = verify.identity(path)
        if seen is None:
            ledger.pop(base.name, None)
            return "missing"
        entry = ledger.get(base.name)
        if (not rehash and isinstance(entry, dict) and entry.get("identity") == seen
                and entry.get("sha256") == base.sha256 and entry.get("file") == base.file):
            self.set_base(base.name, state="verified", digest=base.sha256)
            return "verified"
        self.set_base(base.name, state="checking")
        self.save()
        try:
            digest = verify.file_digest(path)
        except OSError as err:
            self.log.warning(f"{path} unreadable: {err}")
            digest = ""
        if digest == base.sha256 and verify.identity(path) == seen:
            ledger[base.name] = {"file": base.file, "sha256": digest, "identity": seen}
            self.set_base(base.name, state="verified", digest=digest)
            return "verified"
        ledger.pop(base.name, None)
        self.log.warning(f"{path} does not match the manifest's SHA-256 for base {base.name}")
        return "wrong"

    def drop_unwanted(self, manifest: Manifest, wanted: set[str], ledger: dict[str, Any], in_use: "InUse") -> None:
        """Delete copies this node installed that are no longer wanted here, unless used."""
        for name, entry in sorted(ledger.items()):
            if name in wanted or not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                continue
            file = entry["file"]
            if "/" in file or file.startswith("."):
                ledger.pop(name)
                continue
            path = self.path(file)
            if verify.identity(path) != entry.get("identity"):
                ledger.pop(name)     # no longer the file we installed: not ours to delete
                self.cluster.withdraw(name)
                continue
            if in_use.uses(file):
                self.set_base(name, state="kept", reason=f"no longer wanted here, but {in_use.reason(file)}")
                continue
            os.unlink(path)
            verify.fsync_directory(self.directory)
            ledger.pop(name)
            self.cluster.withdraw(name)
            with self.lock:
                self.status["bases"].pop(name, None)
            self.log.info(f"base {name} removed ({file}): no longer wanted on this node")
        for stale in os.listdir(self.path(INCOMING)) if os.path.isdir(self.path(INCOMING)) else []:
            if stale not in {temporary_name(b).rsplit("/", 1)[1] for b in manifest.bases}:
                os.unlink(os.path.join(self.path(INCOMING), stale))

    def publish(self, good: dict[str, Base], wanted: set[str]) -> None:
        published = self.cluster.published()
        for name, base in good.items():
            if published.get(name) != base.sha256:
                self.cluster.publish(name, base.sha256)
        for name in published:
            if name not in good:
                self.cluster.withdraw(name)

    # -- fetching -------------------------------------------------------------------------

    def fetch_all(self, to_fetch: list[Base], manifest: Manifest, good: dict[str, Base],
                  ledger: dict[str, Any]) -> None:
        """Fetch in waves: each wave the bases whose backing base is here, `concurrency` at a
        time; a base whose backing could not be fetched waits for the next pass."""
        remaining = list(to_fetch)
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            while remaining and not self.stopping.is_set():
                ready = [b for b in remaining if b.backing is None or b.backing in good]
                if not ready:
                    break
                for base, ok in zip(ready, pool.map(lambda b: self.fetch_one(b, manifest), ready)):
                    remaining.remove(base)
                    if ok:
                        good[base.name] = base
                        ledger[base.name] = {"file": base.file, "sha256": base.sha256,
                                             "identity": verify.identity(self.path(base.file))}
                        self.save_ledger(ledger)
                        self.cluster.publish(base.name, base.sha256)
        for base in remaining:
            self.set_base(base.name, state="waiting", reason=f"backing base {base.backing} not here yet")
        self.save(force_attribute=True)

    def fetch_one(self, base: Base, manifest: Manifest) -> bool:
        temporary = self.path(temporary_name(base))
        have = verify.identity(temporary)
        already = have[2] if have else 0
        try:
            space.check(self.directory, base.size - already, self.config.reserve_mib, f"base {base.name}")
        except space.NoSpace as err:
            self.log.error(str(err))
            self.set_base(base.name, state="refused", reason=str(err))
            return False
        meter = RateMeter()

        def report(progress) -> None:
            rate = meter.add(progress.bytes)
            eta = (progress.total - progress.bytes) / rate if rate > 0 else None
            self.set_base(base.name, state="fetching", bytes=progress.bytes, total=progress.total,
                          rate=rate, eta=eta, holder=progress.holder, resumed_from=progress.resumed_from)
            self.save()

        chain = [self.config.source] + [n for n in self.cluster.members()
                                        if n != self.config.source and base.wanted_on(n)]
        verified = self.cluster.holders(base.name, base.sha256)
        holders = candidates(self.config.node, self.config.source, chain, verified)
        me = self.config.node
        followed = me in chain and chain.index(me) < len(chain) - 1
        fetcher = Fetcher(base, self.directory, self.config.ssh, self.address, self.config.source,
                          self.config.stall_timeout, report, self.stopping.is_set,
                          pace=self.config.pace_percent / 100, followed=followed)
        started = time.monotonic()
        try:
            holder = fetcher.run(holders, verified)
        except NoSpaceLeft as err:
            self.set_base(base.name, state="refused", reason=f"the directory filled up: {err}")
            return False
        except FetchFailed as err:
            self.log.warning(str(err))
            self.set_base(base.name, state="waiting", reason=str(err),
                          bytes=fetcher.progress.bytes, total=base.size)
            return False
        elapsed = time.monotonic() - started
        for outcome in fetcher.outcomes:
            self.log.info(f"base {base.name}: holder {outcome}")
        self.log.info(f"base {base.name} verified and installed ({base.size} bytes in {elapsed:.1f}s, "
                      f"last from {holder}, resumed at {fetcher.progress.resumed_from})")
        self.set_base(base.name, state="verified", digest=base.sha256, holder=holder,
                      seconds=round(elapsed, 2), resumed_from=fetcher.progress.resumed_from)
        return True


class InUse:
    """The files VMs use, found out once per pass and only when a decision needs it."""

    def __init__(self, worker: Worker, manifest: Manifest) -> None:
        self.worker = worker
        self.manifest = manifest
        self._used: set[str] | None = None
        self._unknown: str | None = None

    def _load(self) -> None:
        if self._used is not None or self._unknown is not None:
            return
        bases = {os.path.join(self.worker.directory, b.file) for b in self.manifest.bases}
        try:
            self._used = inuse.files_in_use(self.worker.directory, bases, self.worker.config.hypervisor,
                                            Deadline(IN_USE_LIMIT))
        except inuse.InUseUnknown as err:
            self._unknown = str(err)
            self.worker.log.warning(f"cannot tell which bases VMs use ({err}): none is deleted or replaced")

    def uses(self, file: str) -> bool:
        self._load()
        return self._unknown is not None or os.path.join(self.worker.directory, file) in (self._used or set())

    def reason(self, file: str) -> str:
        self._load()
        return f"VM use is unknown ({self._unknown})" if self._unknown else "a VM uses it"


def main(argv: list[str]) -> int:
    with open(argv[1], "rb") as handle:
        config = Config.from_json(json.loads(handle.read()))
    log = Log("basesync", config.resource)
    cluster: Cluster
    if config.in_cluster:
        cluster = PacemakerCluster(config.node, config.resource, log)
    else:
        cluster = StandaloneCluster(config.node, [config.source, *config.hosts], log)
    worker = Worker(config, cluster, log)

    def on_term(_signum, _frame) -> None:
        worker.stopping.set()
        worker.wake.set()

    def on_usr1(_signum, _frame) -> None:
        worker.rehash_requested = True
        worker.wake.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    if config.ssh.control_dir:
        os.makedirs(config.ssh.control_dir, mode=0o700, exist_ok=True)
        os.chmod(config.ssh.control_dir, 0o700)
    log.info(f"worker started for {config.directory} (main node {config.source})")
    try:
        worker.run_forever()
    finally:
        worker.close()
    log.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
