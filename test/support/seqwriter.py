"""A guest that proves who wrote its disk last: a boot sector assembled at test time.

SeaBIOS boots it from the VM's (RBD) disk. At boot it takes the time stamp counter as its
instance id, finds the first sector after the records already on the disk (an instance that
boots after a failover appends, it does not overwrite), then writes one 512-byte record per
sector through BIOS int 13h extended write, forever: magic, instance id, sequence number
1, 2, 3 ... A write the disk refuses (a fenced client gets ESHUTDOWN) is retried with the same
sequence number, so a record on the disk always means "this instance wrote here, then".

Reading the disk afterwards, `audit` checks the failover rule: the records form runs, one per
instance, each numbered 1..n without a gap, one run after the other. A stale instance that
wrote after its successor began would leave a record of its own inside or after the
successor's run, or overwrite one of the successor's records (a gap).
"""
from __future__ import annotations

import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
MAGIC = b"RVDSEQ01"
FIRST_RECORD_SECTOR = 1          # sector 0 is the boot sector itself
WRITE_PAUSE_US = 10_000          # ~100 records/s: a 64 MiB disk lasts for 20 minutes
_RECORD = struct.Struct("<8sQI")  # magic, instance id, sequence number

# Real mode at 0x7c00. Memory: record at 0x0600, scan buffer at 0x1000:0000 (127 sectors).
_SOURCE = r"""
    .code16
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    sti
    mov %dl, drive                  # the BIOS boot drive
    mov $0x0600, %di                # the record: zeroed, magic, instance id from RDTSC
    mov $256, %cx
    xor %ax, %ax
    rep stosw
    movl $MAGIC_LO, 0x0600
    movl $MAGIC_HI, 0x0604
    rdtsc
    movl %eax, 0x0608
    movl %edx, 0x060c

scan:                               # read 127 sectors at lba into 0x1000:0000
    movw $127, dap_count
    movw $0, dap_offset
    movw $0x1000, dap_segment
    mov $0x42, %ah
    call disk
    jc scan                         # a failed read: try again
    push %ds
    mov $0x1000, %ax
    mov %ax, %ds
    xor %si, %si
    mov $127, %cx
check:
    cmpl $MAGIC_LO, (%si)
    jne found
    add $512, %si
    loop check
    pop %ds
    addl $127, lba
    jmp scan
found:
    pop %ds
    shr $9, %si                     # sectors before the first free one
    movzwl %si, %esi
    addl %esi, lba

write:
    incl 0x0610                     # next sequence number
retry:
    movw $1, dap_count
    movw $0x0600, dap_offset
    movw $0, dap_segment
    mov $0x43, %ah
    call disk
    jc refused
    addl $1, lba
    cmpl $LAST_SECTOR, lba
    ja full
    call pause
    jmp write
refused:                            # same record again: never a gap, never a duplicate
    call pause
    jmp retry
full:
    hlt
    jmp full

disk:                               # int 13h ah=42h/43h on the boot drive, al=0
    mov $0, %al
    mov drive, %dl
    mov $dap, %si
    int $0x13
    ret

pause:                              # int 15h ah=86h: wait cx:dx microseconds
    mov $0x86, %ah
    mov $PAUSE_HI, %cx
    mov $PAUSE_LO, %dx
    int $0x15
    ret

    .balign 4
dap:
    .byte 16, 0
dap_count:
    .word 0
dap_offset:
    .word 0
dap_segment:
    .word 0
lba:
    .long FIRST_SECTOR, 0
drive:
    .byte 0x80

    .org 510
    .byte 0x55, 0xaa
"""


class AssemblyError(RuntimeError):
    pass


def boot_sector(disk_bytes: int) -> bytes:
    """Assemble the writer with binutils (as, ld) for a disk of `disk_bytes`."""
    magic_lo, magic_hi = struct.unpack("<II", MAGIC)
    symbols = {"MAGIC_LO": magic_lo, "MAGIC_HI": magic_hi, "FIRST_SECTOR": FIRST_RECORD_SECTOR,
               "LAST_SECTOR": disk_bytes // SECTOR - 1,
               "PAUSE_HI": WRITE_PAUSE_US >> 16, "PAUSE_LO": WRITE_PAUSE_US & 0xFFFF}
    with tempfile.TemporaryDirectory(prefix="seqwriter-") as tmp:
        work = Path(tmp)
        source = "".join(f".set {name}, {value:#x}\n" for name, value in symbols.items()) + _SOURCE
        (work / "writer.s").write_text(source)
        for argv in (["as", "--32", "-o", "writer.o", "writer.s"],
                     ["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary",
                      "-e", "_start", "-o", "writer.bin", "writer.o"]):
            result = subprocess.run(argv, cwd=work, capture_output=True, text=True)
            if result.returncode:
                raise AssemblyError(f"{' '.join(argv)}: {result.stderr.strip()}")
        code = (work / "writer.bin").read_bytes()
    if len(code) != SECTOR or code[-2:] != b"\x55\xaa":
        raise AssemblyError(f"the writer is {len(code)} bytes, not one boot sector")
    return code


@dataclass(frozen=True)
class Record:
    sector: int
    instance: int
    sequence: int


def records(disk: bytes) -> list[Record]:
    """The records on a disk image, from sector 1 up to the first sector without one."""
    found = []
    for sector in range(FIRST_RECORD_SECTOR, len(disk) // SECTOR):
        magic, instance, sequence = _RECORD.unpack_from(disk, sector * SECTOR)
        if magic != MAGIC:
            break
        found.append(Record(sector, instance, sequence))
    return found


@dataclass(frozen=True)
class Run:
    """The records one instance wrote, in disk order."""
    instance: int
    first_sector: int
    count: int


def audit(disk: bytes) -> list[Run]:
    """The runs of the disk, each instance's records numbered 1..n in order and the runs one
    after the other; raises AssertionError naming the first record that breaks the rule."""
    runs: list[Run] = []
    seen: set[int] = set()
    for record in records(disk):
        current = runs[-1] if runs else None
        if current and record.instance == current.instance:
            expected = current.count + 1
            if record.sequence != expected:
                raise AssertionError(f"sector {record.sector}: instance {record.instance:#x} "
                                     f"record {record.sequence}, expected {expected}: "
                                     f"a record was overwritten")
            runs[-1] = Run(current.instance, current.first_sector, expected)
            continue
        if record.instance in seen:
            raise AssertionError(f"sector {record.sector}: instance {record.instance:#x} wrote "
                                 f"record {record.sequence} after a later instance had begun")
        if record.sequence != 1:
            raise AssertionError(f"sector {record.sector}: instance {record.instance:#x} "
                                 f"begins with record {record.sequence}: "
                                 f"its first records were overwritten")
        seen.add(record.instance)
        runs.append(Run(record.instance, record.sector, 1))
    return runs
