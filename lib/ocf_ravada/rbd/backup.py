"""Backups of RBD images as plain files: `rbd export-diff` streams and a manifest.

A backup is one directory holding one stream per image and `manifest.json`, written last and
atomically: a directory without a manifest is a partial backup.  A stream is Ceph's own
export-diff format (full: from the image's creation to the snapshot; incremental: from the
previous backup's snapshot), so `rbd import-diff` restores it even without this code.

    manifest.json  {"format": "ravada-backup 1", "vm", "snapshot", "created", "consistency",
                    "base": previous backup's directory name or null,
                    "images": [{"image": "pool/img", "size", "from_snapshot": null|name,
                                "file", "bytes", "sha256"}]}

Every file is hashed while it is written and again while it is restored; `verify` checks a
backup and the chain of backups it builds on.
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import os
import re
import stat
import queue
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import rbd

from .cluster import CephSession, wrap
from .disks import RbdDisk
from .errors import BadDiskSpec, ImageMissing, RbdError

FORMAT = "ravada-backup 1"
MANIFEST = "manifest.json"
CHUNK = 4 << 20
PIPE_CHUNK = 1 << 20                 # Linux's default pipe-max-size
MANIFEST_LIMIT = 1 << 20
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int], None]          # called with the bytes done so far


class BackupInvalid(RbdError):
    """A backup that is partial, altered, truncated or whose chain is broken."""


class TargetExists(RbdError):
    """The restore target exists (and --force was not given, or it is in use)."""


@dataclass(frozen=True)
class ImageEntry:
    image: str                     # POOL/IMAGE or POOL/NAMESPACE/IMAGE
    size: int                      # bytes, at the snapshot
    from_snapshot: str | None      # None: a full stream
    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    vm: str
    snapshot: str
    created: str
    consistency: str
    base: str | None
    images: tuple[ImageEntry, ...]

    def entry(self, image: str) -> ImageEntry | None:
        return next((e for e in self.images if e.image == image), None)

    def to_json(self) -> str:
        doc = {"format": FORMAT, **asdict(self), "images": [asdict(e) for e in self.images]}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def parse(cls, text: str, where: str) -> "Manifest":
        """A manifest checked field by field (it is read from a backup medium: untrusted)."""
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise BackupInvalid(f"{where}: not JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BackupInvalid(f"{where}: not a {FORMAT!r} manifest")

        def text_field(obj: dict, key: str, optional: bool = False) -> str | None:
            value = obj.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not value or len(value) > 1000:
                raise BackupInvalid(f"{where}: field {key!r} missing or not a string")
            return value

        def int_field(obj: dict, key: str) -> int:
            value = obj.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
                raise BackupInvalid(f"{where}: field {key!r} is not a byte count")
            return value

        images = doc.get("images")
        if not isinstance(images, list) or not images:
            raise BackupInvalid(f"{where}: no images")
        entries = []
        for item in images:
            if not isinstance(item, dict):
                raise BackupInvalid(f"{where}: an image entry is not an object")
            entry = ImageEntry(image=text_field(item, "image"), size=int_field(item, "size"),
                               from_snapshot=text_field(item, "from_snapshot", optional=True),
                               file=text_field(item, "file"), bytes=int_field(item, "bytes"),
                               sha256=text_field(item, "sha256"))
            try:
                if RbdDisk.from_spec(entry.image).snapshot:
                    raise BadDiskSpec("a snapshot, not an image")
            except BadDiskSpec as err:
                raise BackupInvalid(f"{where}: image {entry.image!r} refused ({err})") from None
            if not _FILE.match(entry.file) or entry.file == MANIFEST:
                raise BackupInvalid(f"{where}: file name {entry.file!r} refused")
            if not _SHA256.match(entry.sha256):
                raise BackupInvalid(f"{where}: {entry.file}: sha256 is not 64 hex digits")
            entries.append(entry)
        base = text_field(doc, "base", optional=True)
        if base is not None and not _FILE.match(base):
            raise BackupInvalid(f"{where}: base {base!r} refused")
        if len({e.image for e in entries}) != len(entries) or len({e.file for e in entries}) != len(entries):
            raise BackupInvalid(f"{where}: an image or file is listed twice")
        return cls(vm=text_field(doc, "vm"), snapshot=text_field(doc, "snapshot"),
                   created=text_field(doc, "created"), consistency=text_field(doc, "consistency"),
                   base=base, images=tuple(entries))


# ---- files ------------------------------------------------------------------------------------

def stream_file_name(index: int, disk: RbdDisk, incremental: bool) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", disk.image)[:100]
    return f"disk{index}-{safe}.{'incr' if incremental else 'full'}.rbd-diff"


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Atomically: a temporary file, fsync, rename, fsync of the directory."""
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(manifest.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, directory / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BackupInvalid(f"{directory}: no {MANIFEST}: a partial (interrupted) backup, or not "
                            f"a backup") from None
    except OSError as err:
        raise BackupInvalid(f"{path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise BackupInvalid(f"{path} is not a regular file")
        data = handle.read(MANIFEST_LIMIT + 1)
    if len(data) > MANIFEST_LIMIT:
        raise BackupInvalid(f"{path} is larger than {MANIFEST_LIMIT} bytes")
    return Manifest.parse(data.decode("utf-8", "replace"), str(path))


def _open_stream(directory: Path, entry: ImageEntry) -> BinaryIO:
    path = directory / entry.file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise BackupInvalid(f"{path}: {err.strerror}") from None
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise BackupInvalid(f"{path} is not a regular file")
    return handle


def check_file(directory: Path, entry: ImageEntry, progress: Progress | None = None) -> None:
    """Size and SHA-256 of one stream as the manifest records them."""
    digest = hashlib.sha256()
    done = 0
    with _open_stream(directory, entry) as handle:
        while data := handle.read(CHUNK):
            digest.update(data)
            done += len(data)
            if progress:
                progress(done)
    if done != entry.bytes:
        raise BackupInvalid(f"{directory / entry.file}: {done} bytes, the manifest says {entry.bytes} "
                            f"(truncated?)")
    if digest.hexdigest() != entry.sha256:
        raise BackupInvalid(f"{directory / entry.file}: SHA-256 differs from the manifest (altered)")


def chain_of(directory: Path) -> list[tuple[Path, Manifest]]:
    """The backup in `directory` and the ones it builds on, oldest first (manifests only)."""
    chain: list[tuple[Path, Manifest]] = []
    seen: set[str] = set()
    current: Path | None = directory
    while current is not None:
        manifest = read_manifest(current)
        chain.insert(0, (current, manifest))
        seen.add(current.name)
        if manifest.base is None:
            break
        if manifest.base in seen or len(chain) > 10000:
            raise BackupInvalid(f"{current}: the chain of base backups loops")
        current = current.parent / manifest.base
    for (_, older), (path, newer) in zip(chain, chain[1:]):
        for entry in newer.images:
            if entry.from_snapshot is None:
                continue
            if entry.from_snapshot != older.snapshot or older.entry(entry.image) is None:
                raise BackupInvalid(f"{path}: {entry.image} continues from {entry.from_snapshot}, but "
                                    f"its base backup is of {older.snapshot}")
    return chain


def verify(directory: Path, progress: Progress | None = None) -> list[tuple[Path, Manifest]]:
    """The whole chain of `directory` with every stream's size and SHA-256 checked."""
    chain = chain_of(directory)
    total = 0
    for path, manifest in chain:
        for entry in manifest.images:
            check_file(path, entry, (lambda n, t=total: progress(t + n)) if progress else None)
            total += entry.bytes
    return chain


def restore_plan(chain: list[tuple[Path, Manifest]], image: str) -> list[tuple[Path, ImageEntry]]:
    """The streams that rebuild `image` at the newest backup of `chain`: back to its last full."""
    plan: list[tuple[Path, ImageEntry]] = []
    for path, manifest in reversed(chain):
        entry = manifest.entry(image)
        if entry is None:
            raise BackupInvalid(f"{path}: has no stream of {image}")
        plan.insert(0, (path, entry))
        if entry.from_snapshot is None:
            return plan
    raise BackupInvalid(f"no full backup of {image} at the start of the chain")


# ---- Ceph -------------------------------------------------------------------------------------

class RbdTool:
    """The `rbd` command with our cluster, identity and time limits (it streams the export-diff
    format both ways; librbd's Python binding has no export-diff)."""

    def __init__(self, conf: str, client_id: str, keyring: str | None, timeout: float) -> None:
        seconds = str(int(max(1, timeout)))
        self.base = ["rbd", "--conf", conf, "--id", client_id, "--no-progress",
                     "--rados-osd-op-timeout", seconds, "--rados-mon-op-timeout", seconds,
                     "--client-mount-timeout", seconds]
        if keyring:
            self.base += ["--keyring", keyring]

    def popen(self, args: list[str], **kwargs) -> tuple[subprocess.Popen, BinaryIO]:
        errors = tempfile.TemporaryFile()
        try:
            return subprocess.Popen(self.base + args, stderr=errors, bufsize=0, **kwargs), errors
        except FileNotFoundError:
            errors.close()
            raise RbdError("the rbd command is not installed (ceph-common)") from None

    @staticmethod
    def finish(proc: subprocess.Popen, errors: BinaryIO, what: str) -> None:
        code = proc.wait()
        errors.seek(0)
        text = " ".join(errors.read(2000).decode("utf-8", "replace").split())
        errors.close()
        if code != 0:
            raise RbdError(f"{what} failed: {text or f'rbd exited with {code}'}")


def changed_bytes(session: CephSession, disk: RbdDisk, snapshot: str, from_snapshot: str | None) -> int:
    """Bytes of data an export-diff of `disk` at `snapshot` carries (an estimate for progress)."""
    io = session.ioctx(disk.pool, disk.namespace)
    total = 0

    def count(_offset: int, length: int, exists: bool) -> int:
        nonlocal total
        total += length if exists else 0
        return 0
    try:
        with rbd.Image(io, disk.image, snapshot=snapshot, read_only=True) as image:
            image.diff_iterate(0, image.size(), from_snapshot, count)
            return total
    except rbd.Error as exc:
        raise wrap(exc, f"measuring {disk.spec}@{snapshot}") from exc


def image_size(session: CephSession, disk: RbdDisk, snapshot: str) -> int:
    io = session.ioctx(disk.pool, disk.namespace)
    try:
        with rbd.Image(io, disk.image, snapshot=snapshot, read_only=True) as image:
            return image.size()
    except rbd.Error as exc:
        raise wrap(exc, f"opening {disk.spec}@{snapshot}") from exc


def export(tool: RbdTool, disk: RbdDisk, snapshot: str, from_snapshot: str | None, path: Path,
           progress: Progress | None = None) -> tuple[int, str]:
    """Stream `disk`@`snapshot` (since `from_snapshot`, or in full) into the new file `path`;
    (bytes, SHA-256).  The file is fsynced; on failure it is removed."""
    args = ["export-diff"] + (["--from-snap", from_snapshot] if from_snapshot else []) \
        + [f"{disk.spec}@{snapshot}", "-"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    proc, errors = tool.popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            done, sha = _copy_hashing(proc.stdout, out, progress)
            os.fsync(out.fileno())
        tool.finish(proc, errors, f"rbd export-diff of {disk.spec}@{snapshot}")
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        path.unlink(missing_ok=True)
        raise
    return done, sha


def _copy_hashing(source: BinaryIO, out: BinaryIO, progress: Progress | None) -> tuple[int, str]:
    """Copy the pipe `source` to `out`, hashing it: three stages at once (a thread reads the
    pipe into a ring of buffers, a thread hashes, this one writes; hashlib and file I/O release
    the GIL), so the copy runs about as fast as the slowest of them instead of their sum."""
    try:
        fcntl.fcntl(source.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_CHUNK)
    except OSError:
        pass  # a smaller pipe is only slower
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(8):
        free.put(bytearray(PIPE_CHUNK))
    filled: queue.Queue[tuple[bytearray | None, int | BaseException]] = queue.Queue()

    def read() -> None:
        try:
            while True:
                buf = free.get()
                count = source.readinto(buf) or 0
                filled.put((buf, count))
                if not count:
                    return
        except BaseException as err:  # handed to the writing thread
            filled.put((None, err))

    threading.Thread(target=read, name="pipe reader", daemon=True).start()
    digest = hashlib.sha256()
    done = 0
    fd = out.fileno()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hasher:
        while True:
            buf, count = filled.get()
            if buf is None:
                raise count
            if not count:
                break
            view = memoryview(buf)[:count]
            hashed = hasher.submit(digest.update, view)
            while view:
                view = view[os.write(fd, view):]
            hashed.result()
            free.put(buf)
            done += count
            if progress:
                progress(done)
    return done, digest.hexdigest()


def _target_in_use(session: CephSession, target: RbdDisk) -> bool:
    io = session.ioctx(target.pool, target.namespace)
    with rbd.Image(io, target.image, read_only=True) as image:
        return bool(list(image.watchers_list()))


def remove_image(session: CephSession, target: RbdDisk) -> None:
    """Remove `target` with its (unprotected) snapshots; refused while a client has it open."""
    io = session.ioctx(target.pool, target.namespace)
    try:
        if _target_in_use(session, target):
            raise TargetExists(f"{target.spec} is open by a client (a running VM?): not replacing it")
        with rbd.Image(io, target.image) as image:
            for snap in list(image.list_snaps()):
                image.remove_snap(snap["name"])
        rbd.RBD().remove(io, target.image)
    except rbd.Error as exc:
        raise wrap(exc, f"removing {target.spec}") from exc


def image_exists(session: CephSession, target: RbdDisk) -> bool:
    io = session.ioctx(target.pool, target.namespace)
    try:
        with rbd.Image(io, target.image, read_only=True):
            return True
    except rbd.ImageNotFound:
        return False
    except rbd.Error as exc:
        raise wrap(exc, f"looking for {target.spec}") from exc


def restore(session: CephSession, tool: RbdTool, plan: list[tuple[Path, ImageEntry]], target: RbdDisk,
            force: bool = False, progress: Progress | None = None) -> int:
    """Create `target` and apply the plan's streams in order; bytes applied.  An existing
    target is refused unless `force` (and never while in use).  Each stream is hashed while
    it is fed to `rbd import-diff`; on any failure the half-restored image is removed."""
    try:
        session.ioctx(target.pool, target.namespace)
    except ImageMissing:
        raise RbdError(f"pool {target.pool!r} does not exist") from None
    if image_exists(session, target):
        if not force:
            raise TargetExists(f"{target.spec} exists: not restoring over it (--force replaces it)")
        remove_image(session, target)
    io = session.ioctx(target.pool, target.namespace)
    try:
        rbd.RBD().create(io, target.image, plan[0][1].size, old_format=False)
    except rbd.Error as exc:
        raise wrap(exc, f"creating {target.spec}") from exc
    applied = 0
    try:
        for directory, entry in plan:
            applied += _apply(tool, directory, entry, target,
                              (lambda n, a=applied: progress(a + n)) if progress else None)
    except BaseException:
        try:
            remove_image(session, target)
        except RbdError:
            pass  # the original error matters more; the admin sees the leftover image
        raise
    return applied


def _apply(tool: RbdTool, directory: Path, entry: ImageEntry, target: RbdDisk,
           progress: Progress | None) -> int:
    digest = hashlib.sha256()
    done = 0
    with _open_stream(directory, entry) as source:
        proc, errors = tool.popen(["import-diff", "-", target.spec], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL)
        try:
            while data := source.read(CHUNK):
                digest.update(data)
                done += len(data)
                if done > entry.bytes:
                    break
                proc.stdin.write(data)
                if progress:
                    progress(done)
            if done != entry.bytes or digest.hexdigest() != entry.sha256:
                raise BackupInvalid(f"{directory / entry.file} changed while it was restored")
            proc.stdin.close()
        except BrokenPipeError:
            pass  # rbd stopped reading: finish() reports why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        tool.finish(proc, errors, f"rbd import-diff of {directory / entry.file} into {target.spec}")
    return done
