"""SHA-256 of base files, and installing a verified copy under its real name.

A copy becomes visible only through `install`: fsync'ed, made read-only, renamed atomically
over its real name, directory fsync'ed. So a reader of the directory (libvirt, a VM's
overlay, a peer's rsync) sees either no file, the old one, or a complete verified copy.
"""
from __future__ import annotations

import hashlib
import os
import stat

CHUNK = 4 * 1024 * 1024
READ_ONLY = 0o444


class GrowingDigest:
    """SHA-256 of a file that is still being appended to (rsync --append): each `update`
    hashes only the bytes added since the last one, so a copy is verified moments after its
    last byte arrives instead of being read again in full."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self._hash = hashlib.sha256()

    def update(self) -> int:
        """Hash what was appended; the number of bytes hashed so far."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return self.offset
        try:
            os.lseek(fd, self.offset, os.SEEK_SET)
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                self._hash.update(chunk)
                self.offset += len(chunk)
        finally:
            os.close(fd)
        return self.offset

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def file_digest(path: str) -> str:
    """SHA-256 of a regular file (never through a symlink, never blocking on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        digest = hashlib.sha256()
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
    finally:
        os.close(fd)


def identity(path: str) -> list[int] | None:
    """What must stay the same for a verified file to count as unchanged without hashing it
    again: device, inode, size, modification and change times. None: no regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(temporary: str, final: str) -> None:
    """Make the verified `temporary` the file `final`: data on disk first, read-only, then one
    rename (which replaces an older file of that name atomically), then the directory entry."""
    fd = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        os.fchmod(fd, READ_ONLY)
    finally:
        os.close(fd)
    os.rename(temporary, final)
    fsync_directory(os.path.dirname(final))
