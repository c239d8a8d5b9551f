"""``gpunn kernels``: what each kernel costs a GPU, without running it.

Usage::

    gpunn kernels --arch sm_90                         # registers, shared memory, spills, occupancy
    gpunn kernels --arch sm_80,sm_90 --block 32 --json k.json
    gpunn kernels examples/my_softmax.py               # your kernels (those the file declares in KERNELS)

Every kernel is compiled to PTX and ``ptxas -v`` reports its registers, shared memory,
spills and stack (:mod:`gpunn.ptx`); :mod:`gpunn.occupancy` turns them into the
theoretical occupancy at the block size the backend launches the kernel with.
"""
from __future__ import annotations

from gpunn.errors import GpunnError
from gpunn.occupancy import ARCHS, normalize_arch, occupancy
from gpunn.options import number
from gpunn.output import check_writable, write_json
from gpunn.report import text_table


def kernel_rows(arch: str = "sm_90", block: int | None = None, source: str | None = None) -> list[dict]:
    """One row per kernel: ptxas's resources on ``arch`` and the theoretical occupancy at the
    block size the backend launches it with (or ``block``).  ``source``: a user's Python file,
    whose declared kernels (``KERNELS``, see :mod:`gpunn.lab`) are reported instead of gpunn's."""
    arch = normalize_arch(arch)
    try:
        from gpunn import ptx

        records = ptx.kernel_report([arch], source=source)
    except ImportError as exc:
        raise GpunnError(f'gpunn kernels needs numba and numba-cuda ({exc.name or exc}); '
                         'install them with: pip install "gpunn[sim]"') from None
    except RuntimeError as exc:  # ptxas missing or failing, or a user's kernel that does not compile
        raise GpunnError(str(exc).strip().splitlines()[-1]) from None
    rows = []
    for r in records:
        threads = int(block or r["block"])
        occ = occupancy(arch, threads, r["registers"], r["shared_bytes"])
        rows.append({"kernel": r["kernel"], "op": r["op"], "module": r["module"], "signature": r["signature"],
                     "arch": arch, "block": threads, "registers": r["registers"],
                     "shared_bytes": r["shared_bytes"], "spill_store_bytes": r["spill_store_bytes"],
                     "spill_load_bytes": r["spill_load_bytes"], "stack_frame_bytes": r["stack_frame_bytes"],
                     "f64_instructions": len(r["f64_lines"]), "blocks_per_sm": occ.blocks_per_sm,
                     "warps_per_sm": occ.warps_per_sm, "max_warps_per_sm": occ.max_warps_per_sm,
                     "occupancy_percent": occ.percent, "limited_by": list(occ.limited_by)})
    return rows


def format_kernels(rows, own: bool = True) -> str:
    headers = ("kernel", "op", "arch", "block", "regs", "smem B", "spill st/ld B", "stack B", "f64", "blocks/SM",
               "warps/SM", "occupancy", "limited by")
    cells = [[r["kernel"], r["op"], r["arch"], str(r["block"]), str(r["registers"]), str(r["shared_bytes"]),
              f"{r['spill_store_bytes']}/{r['spill_load_bytes']}", str(r["stack_frame_bytes"]),
              str(r["f64_instructions"]), str(r["blocks_per_sm"]), f"{r['warps_per_sm']}/{r['max_warps_per_sm']}",
              f"{r['occupancy_percent']:.3g}%", ", ".join(r["limited_by"])] for r in rows]
    note = ("block: the most threads the backend launches the kernel with; the row-wise kernels (softmax, "
            "softmax_cross_entropy, mse, count_correct) use the smallest power of two >= the row width, at least 32 "
            "(32 for 10 classes): --block N shows another size, and `gpunn profile` in the simulator every launch.")
    if not own:
        note = ("block: the threads per block the file's KERNELS declares (--block N shows another size); "
                "f64: float64 instructions in the PTX (a bare 0.0 or 1.0 in a kernel is a float64: write float32(0.0))")
    return text_table(headers, cells, right=headers[3:11]) + "\n" + note


# ---------------------------------------------------------------------------- command line


def cmd_kernels(args):
    check_writable(args.json)
    archs = [normalize_arch(a) for a in args.arch.split(",") if a.strip()]
    if not archs:
        raise GpunnError(f"--arch names no architecture: {args.arch!r}")
    rows = [row for arch in archs for row in kernel_rows(arch, args.block, args.file)]
    print(format_kernels(rows, own=args.file is None))
    if args.json:
        write_json(args.json, {"archs": {a: ARCHS[a]._asdict() for a in archs}, "kernels": rows})
    return 0


def register_cli(sub):
    block_size = number(int, lambda v: 1 <= v <= 1024, "a block size of 1 to 1024 threads (CUDA's limit)")

    p = sub.add_parser("kernels", help="registers, shared memory, spills and occupancy of every kernel (no GPU needed)",
                       description="Compile every kernel to PTX, ask ptxas for its resources on an architecture, "
                                   "and compute the theoretical occupancy at the backend's block size.")
    p.add_argument("file", nargs="?", metavar="FILE.py",
                   help="your kernels instead of gpunn's: those FILE.py declares in KERNELS = [(kernel, "
                        '"numba signature", threads per block), ...] (see gpunn.lab)')
    p.add_argument("--arch", default="sm_90", help="architecture(s), comma-separated: sm_70, sm_75, sm_80, sm_86, sm_89, sm_90 (default: sm_90)")
    p.add_argument("--block", type=block_size, metavar="N",
                   help="threads per block for the occupancy, at most 1024 (default: the backend's)")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.set_defaults(func=cmd_kernels)
