"""One bounded librados session: connect, open pools, blocklist.

Every call has a timeout (connect, mon commands, OSD ops), so an unreachable cluster becomes a
CephUnreachable error instead of a hung agent.
"""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass

import rados

from .addresses import ClientAddr
from .errors import CephAuthError, CephConfigMissing, CephUnreachable, ImageMissing, MissingCaps, RbdError

# A fence must outlive any plausible outage; Ceph has no "forever" (ceph-csi uses the same).
LONG_BLOCKLIST_SECONDS = 157784760          # ~5 years
DEFAULT_WATCH_TIMEOUT = 30.0                # osd_client_watch_timeout's default


@dataclass(frozen=True)
class BlocklistEntry:
    addr: str
    until: str


class CephSession:
    """A connected librados client.  Use as a context manager or call close()."""

    def __init__(self, conf_path: str, client_id: str = "admin", keyring: str | None = None,
                 timeout: float = 10.0) -> None:
        for path in (conf_path, keyring):
            if path and not os.path.isfile(path):
                raise CephConfigMissing(f"Ceph file {path!r} does not exist (or is not a file)")
        self.timeout = max(1.0, float(timeout))
        seconds = str(int(self.timeout))
        conf = {
            # bound every wait inside librados/librbd
            "client_mount_timeout": seconds,
            "rados_mon_op_timeout": seconds,
            "rados_osd_op_timeout": seconds,
            # tracker 54613: any non-zero value makes librbd's own blocklist calls fail (EINVAL);
            # we blocklist explicitly with our own expiry instead
            "rbd_blocklist_expire_seconds": "0",
            "log_to_stderr": "false",
            "err_to_stderr": "false",
        }
        if keyring:
            conf["keyring"] = keyring
        self.client_id = client_id
        try:
            self.rados = rados.Rados(conffile=conf_path, rados_id=client_id, conf=conf)
        except rados.Error as exc:
            raise CephUnreachable(f"cannot load Ceph config {conf_path!r} for client.{client_id}: {exc}") from exc
        try:
            self.rados.connect(timeout=int(self.timeout))
        except rados.PermissionError as exc:
            self.rados.shutdown()
            raise CephAuthError(f"cephx refused client.{client_id} (check ceph_id and keyring): {exc}") from exc
        except rados.Error as exc:
            self.rados.shutdown()
            raise CephUnreachable(f"Ceph cluster not reachable within {self.timeout:.0f}s as "
                                  f"client.{client_id}: {exc}") from exc
        self._ioctxs: dict[tuple[str, str], rados.Ioctx] = {}

    def __enter__(self) -> "CephSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for io in self._ioctxs.values():
            io.close()
        self._ioctxs.clear()
        self.rados.shutdown()

    # ---- identity ---------------------------------------------------------------------------
    def own_addr(self) -> ClientAddr:
        """Our client address as the cluster sees it (learned from the monitor)."""
        return ClientAddr.parse(self.rados.get_addrs())

    def watch_timeout(self) -> float:
        """osd_client_watch_timeout as configured for this client (30 s unless set in ceph.conf)."""
        try:
            return float(self.rados.conf_get("osd_client_watch_timeout"))
        except (rados.Error, TypeError, ValueError):
            return DEFAULT_WATCH_TIMEOUT

    # ---- pools ------------------------------------------------------------------------------
    def ioctx(self, pool: str, namespace: str = "") -> rados.Ioctx:
        key = (pool, namespace)
        if key not in self._ioctxs:
            try:
                io = self.rados.open_ioctx(pool)
            except rados.ObjectNotFound as exc:
                raise ImageMissing(f"Ceph pool {pool!r} does not exist") from exc
            except rados.Error as exc:
                raise wrap(exc, f"opening pool {pool!r}") from exc
            io.set_namespace(namespace)
            self._ioctxs[key] = io
        return self._ioctxs[key]

    # ---- monitor commands -------------------------------------------------------------------
    def mon_command(self, what: str, **cmd) -> bytes:
        try:
            ret, out, err = self.rados.mon_command(json.dumps(cmd), b"", timeout=int(self.timeout))
        except rados.Error as exc:
            raise wrap(exc, what) from exc
        if ret == -errno.EACCES or ret == -errno.EPERM:
            raise MissingCaps(f"client.{self.client_id} may not {what} ({err.strip() or 'EACCES'}); "
                              f"it needs mon 'profile rbd' (an admin key to remove entries)")
        if ret in (-errno.ETIMEDOUT, -errno.EINTR):
            raise CephUnreachable(f"{what}: no answer from the monitors within {self.timeout:.0f}s")
        if ret != 0:
            raise RbdError(f"{what} failed: {err.strip() or errno.errorcode.get(-ret, ret)}")
        return out

    def blocklist_add(self, addr: str, expire_seconds: float = LONG_BLOCKLIST_SECONDS) -> None:
        """Fence one address (ip:0/nonce = one client; ip:0/0 = every client from that IP).
        Takes effect at once: the OSDs drop its watches and answer its ops with ESHUTDOWN."""
        self.mon_command(f"blocklist {addr}", prefix="osd blocklist", blocklistop="add", addr=addr,
                         expire=float(expire_seconds))

    def blocklist_rm(self, addr: str) -> None:
        self.mon_command(f"remove {addr} from the blocklist", prefix="osd blocklist", blocklistop="rm",
                         addr=addr)

    def blocklist_ls(self) -> list[BlocklistEntry]:
        out = self.mon_command("list the blocklist", prefix="osd blocklist ls", format="json")
        text = out.decode() or "[]"
        # Pacific prints two arrays back to back ("[entries][range entries]"); the first is ours
        entries, _ = json.JSONDecoder().raw_decode(text)
        return [BlocklistEntry(e["addr"], e.get("until", "")) for e in entries]

    def is_blocklisted(self, addr: str, entries: list[BlocklistEntry] | None = None) -> bool:
        """True when `addr` itself or its whole IP is on the blocklist (as the OSDs match it)."""
        parsed = ClientAddr.parse(addr)
        wanted = {str(parsed), str(ClientAddr(parsed.ip, 0, 0))}
        listed = self.blocklist_ls() if entries is None else entries
        return any(str(ClientAddr.parse(e.addr)) in wanted for e in listed)


def wrap(exc: Exception, what: str) -> RbdError:
    """Map a rados/rbd exception to our error classes (by errno where librados gives one)."""
    code = getattr(exc, "errno", None)
    name = type(exc).__name__
    if code in (errno.EACCES, errno.EPERM) or name in ("PermissionError", "PermissionDeniedError"):
        return MissingCaps(f"{what}: permission denied for our cephx user ({exc})")
    if code in (errno.ETIMEDOUT, errno.EINTR) or name in ("TimedOut", "InterruptedOrTimeoutError", "Timeout"):
        return CephUnreachable(f"{what}: Ceph did not answer in time ({exc})")
    if code == errno.ESHUTDOWN or name == "ConnectionShutdown":
        return RbdError(f"{what}: our own Ceph client is blocklisted (this node is fenced?) ({exc})")
    if code == errno.ENOENT or name in ("ObjectNotFound", "ImageNotFound"):
        return ImageMissing(f"{what}: does not exist ({exc})")
    return RbdError(f"{what}: {exc}")
