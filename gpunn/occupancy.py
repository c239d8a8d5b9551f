"""Theoretical occupancy: how many warps of a kernel fit on one SM, without a GPU.

This is NVIDIA's occupancy calculator (``cuda_occupancy.h``, the spreadsheet and
Nsight Compute's "theoretical occupancy") for the architectures gpunn targets.
Four resources each cap the number of resident blocks per SM; the smallest cap
wins:

* warps: ``max_threads_per_sm / 32`` warp slots, ``ceil(block / 32)`` per block;
* blocks: a fixed number of block slots per SM;
* registers: allocated per warp, ``regs_per_thread * 32`` rounded up to 256, out of
  64K registers split across 4 sub-partitions (a warp's registers come from one);
* shared memory: static + dynamic + the driver's reserved 1 KiB per block (sm_80
  on), rounded up to the allocation unit, out of the SM's shared memory at the
  largest carveout (the driver picks the carveout a kernel needs by default).

Occupancy is ``resident blocks * warps per block / max warps per SM``.

    >>> occupancy("sm_80", threads=256, registers=32).percent
    100.0
    >>> occupancy("sm_80", threads=256, registers=128).limited_by
    ('registers',)
"""
from __future__ import annotations

from typing import NamedTuple

WARP = 32


class ArchLimits(NamedTuple):
    """Per-SM resources of one compute capability (CUDA C Programming Guide, "Technical Specifications")."""

    max_threads_per_sm: int
    max_blocks_per_sm: int
    shared_per_sm: int  # bytes at the largest carveout (cudaDeviceProp.sharedMemPerMultiprocessor)
    shared_per_block_optin: int  # most a block may opt in to (cudaDeviceProp.sharedMemPerBlockOptin)
    shared_reserved_per_block: int  # the driver's own shared memory per block (reservedSharedMemPerBlock)
    shared_alloc_unit: int  # shared memory is allocated per block in units of this many bytes
    registers_per_sm: int = 65536
    registers_per_block: int = 65536
    max_registers_per_thread: int = 255
    register_alloc_unit: int = 256  # registers are allocated per warp in units of this many
    sub_partitions: int = 4  # a warp's registers come from one of these quarters of the register file
    max_threads_per_block: int = 1024

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // WARP


KIB = 1024
ARCHS = {
    "sm_70": ArchLimits(2048, 32, 96 * KIB, 96 * KIB, 0, 256),          # V100
    "sm_75": ArchLimits(1024, 16, 64 * KIB, 64 * KIB, 0, 256),          # T4, RTX 20xx
    "sm_80": ArchLimits(2048, 32, 164 * KIB, 163 * KIB, KIB, 128),      # A100
    "sm_86": ArchLimits(1536, 16, 100 * KIB, 99 * KIB, KIB, 128),       # A10, RTX 30xx
    "sm_87": ArchLimits(2048, 16, 164 * KIB, 163 * KIB, KIB, 128),      # Jetson Orin
    "sm_89": ArchLimits(1536, 24, 100 * KIB, 99 * KIB, KIB, 128),       # L4, L40S, RTX 40xx
    "sm_90": ArchLimits(2048, 32, 228 * KIB, 227 * KIB, KIB, 128),      # H100, H200
}


class Occupancy(NamedTuple):
    """The result for one kernel at one block size on one architecture."""

    arch: str
    threads: int
    registers: int
    shared_bytes: int  # per block as allocated (with the reserved part, rounded up)
    blocks_per_sm: int  # resident blocks: the minimum of the four limits below
    warps_per_sm: int
    max_warps_per_sm: int
    limit_warps: int
    limit_blocks: int
    limit_registers: int | None  # None: this resource sets no limit (no registers / no shared memory)
    limit_shared: int | None

    @property
    def fraction(self) -> float:
        return self.warps_per_sm / self.max_warps_per_sm

    @property
    def percent(self) -> float:
        return 100.0 * self.fraction

    @property
    def limited_by(self) -> tuple:
        """The resources whose limit is the binding one (several may tie)."""
        limits = {"warps": self.limit_warps, "blocks": self.limit_blocks,
                  "registers": self.limit_registers, "shared": self.limit_shared}
        return tuple(name for name, v in limits.items() if v is not None and v == self.blocks_per_sm)


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def parse_arch(arch: str) -> tuple[int, int]:
    """``"sm_90"`` (or ``"9.0"``, ``"90"``, ``"compute_90"``) -> ``(9, 0)``."""
    digits = arch.lower().strip().removeprefix("sm_").removeprefix("compute_").replace(".", "")
    if not digits.isdigit() or len(digits) < 2:
        raise ValueError(f"not a compute capability: {arch!r} (expected e.g. sm_90)")
    return int(digits[:-1]), int(digits[-1])


def arch_name(arch: str) -> str:
    """``"9.0"``, ``"90"`` or ``"sm_90"`` -> ``"sm_90"`` (any compute capability)."""
    return "sm_%d%d" % parse_arch(arch)


def normalize_arch(arch: str) -> str:
    """``"sm_90"``, ``"9.0"`` or ``"90"`` -> ``"sm_90"``; ValueError for an architecture not in ARCHS."""
    try:
        key = arch_name(arch)
    except ValueError:
        key = None
    if key not in ARCHS:
        raise ValueError(f"no occupancy limits for {arch!r}; known: {', '.join(ARCHS)}")
    return key


def occupancy(arch: str, threads: int, registers: int, static_shared: int = 0, dynamic_shared: int = 0) -> Occupancy:
    """Theoretical occupancy of a kernel using ``registers`` per thread and ``static_shared`` +
    ``dynamic_shared`` bytes per block, launched with ``threads`` per block on ``arch``.

    A configuration that cannot launch at all (too many threads, registers or shared
    memory for one block) has 0 resident blocks."""
    arch = normalize_arch(arch)
    lim = ARCHS[arch]
    threads, registers = int(threads), int(registers)
    if threads < 1:
        raise ValueError(f"threads per block must be positive, got {threads}")
    warps = -(-threads // WARP)

    by_warps = lim.max_warps_per_sm // warps if threads <= lim.max_threads_per_block else 0

    regs_per_warp = _round_up(registers * WARP, lim.register_alloc_unit)
    if (registers > lim.max_registers_per_thread or regs_per_warp * warps > lim.registers_per_block
            or regs_per_warp * _round_up(warps, lim.sub_partitions) > lim.registers_per_block):
        by_regs = 0
    elif regs_per_warp == 0:
        by_regs = None
    else:
        warps_per_partition = (lim.registers_per_sm // lim.sub_partitions) // regs_per_warp
        by_regs = warps_per_partition * lim.sub_partitions // warps

    shared = _round_up(int(static_shared) + int(dynamic_shared) + lim.shared_reserved_per_block, lim.shared_alloc_unit)
    if shared > lim.shared_per_block_optin + lim.shared_reserved_per_block:
        by_shared = 0
    else:
        by_shared = lim.shared_per_sm // shared if shared else None

    blocks = min(v for v in (by_warps, lim.max_blocks_per_sm, by_regs, by_shared) if v is not None)
    return Occupancy(arch, threads, registers, shared, blocks, blocks * warps, lim.max_warps_per_sm,
                     by_warps, lim.max_blocks_per_sm, by_regs, by_shared)
