"""The lab's throw-away Ceph (ravada_lab.ceph) with the test's own guest: the seqwriter.

Everything but the guest lives in the lab package, which `ravada-lab up --ceph` uses too.
"""
from __future__ import annotations

from ravada_lab.ceph import (FENCE_USER, DISK_BYTES, define_ceph_secret,  # noqa: F401
                             stop_recorded, write_rbd_domain)
from ravada_lab.ceph import LabCeph as _LabCeph
from support import seqwriter


class LabCeph(_LabCeph):
    def create_writer_image(self, name: str) -> str:
        """A fresh image whose first sector is the seqwriter guest; returns 'pool/name'."""
        return self.create_image(name, seqwriter.boot_sector(DISK_BYTES))
