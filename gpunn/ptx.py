"""Compile every kernel to PTX, check it for float64, and ask ptxas what it costs.

Usage::

    python -m gpunn.ptx --arch sm_70,sm_80,sm_90          # a table
    python -m gpunn.ptx --arch sm_90 --json               # the records, as JSON

For each kernel of :data:`KERNEL_MODULES`, each signature the backend launches it
with (``KernelSpec.signatures``) and each architecture, :func:`kernel_report`
gives one record: the float64 instructions found in the PTX (there must be none:
gpunn is float32 throughout), and from ``ptxas -v`` the registers per thread,
spill stores and loads, stack frame and static shared memory, next to the block
size the backend launches the kernel with.  That is what theoretical occupancy
needs.  No GPU is needed: ``numba.cuda.compile_ptx`` and ptxas (shipped in the
``nvidia-cuda-nvcc`` wheel that ``numba-cuda[cu12]`` installs) run anywhere.

``compile_ptx`` does not exist in the CUDA simulator, so :func:`kernel_report`
re-runs this module in a subprocess with ``NUMBA_ENABLE_CUDASIM=0`` when the
simulator is on in this process.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from gpunn.env import numba_numpy_problem, simulator_on
from gpunn.kernels import FAMILIES
from gpunn.occupancy import arch_name, parse_arch
from gpunn.report import text_table

#: The kernel families, one module of gpunn.kernels each.
KERNEL_MODULES = FAMILIES

DEFAULT_ARCHS = ("sm_70", "sm_80", "sm_90")

#: A PTX instruction that computes, converts, moves or stores a float64 (``add.f64``,
#: ``cvt.f64.f32``, ``cvt.rn.f32.f64``, ``ld.global.f64``, ...), or a declared f64 register.
F64_RE = re.compile(r"^\s*(?:@!?%\w+\s+)?[a-z]+(?:\.[a-z0-9]+)*\.f64\b|\.reg\s+\.f64\b|%fd\d")


class PtxasMissing(RuntimeError):
    """ptxas was not found (install the cu12 extra: ``pip install "numba-cuda[cu12]"``)."""


def kernel_specs(source: str | None = None):
    """``[(module_name, KernelSpec), ...]`` for every kernel the backend launches, or for those the
    user's file ``source`` declares (its ``KERNELS``: see :func:`gpunn.lab.declared_kernels`)."""
    if source is not None:
        from gpunn.versions import declared_kernels

        return [(source, spec) for spec in declared_kernels(source)]
    out = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"gpunn.kernels.{name}")
        out.extend((name, spec) for spec in module.KERNELS)
    return out


@contextlib.contextmanager
def _target(cc):
    """Compile device functions for ``cc`` without a GPU.

    numba-cuda compiles a device function that a kernel calls for the *current
    device's* compute capability, and so asks the driver for it; on a machine
    without a GPU that fails even inside ``compile_ptx``.  For the duration of the
    compile this answers with the target ``cc`` instead."""
    import numba.cuda.dispatcher as dispatcher

    class _Device:
        compute_capability = cc

    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Device
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def compile_ptx(spec, signature, cc) -> str:
    """The PTX of one kernel for one signature and compute capability."""
    from numba import cuda

    with _target(cc):
        ptx, _ = cuda.compile_ptx(spec.kernel.py_func, signature, cc=cc)
    return ptx


def f64_lines(ptx: str) -> list[str]:
    """The PTX lines that touch float64 (an empty list is the only right answer)."""
    return [line.strip() for line in ptx.splitlines() if not line.lstrip().startswith("//") and F64_RE.search(line)]


def find_ptxas() -> str:
    """Path of ptxas: the nvidia-cuda-nvcc wheel's, else the one on PATH."""
    try:
        import nvidia.cuda_nvcc as nvcc

        for root in list(getattr(nvcc, "__path__", [])):
            path = os.path.join(root, "bin", "ptxas")
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    except ImportError:
        pass
    path = shutil.which("ptxas")
    if path is None:
        raise PtxasMissing(
            'ptxas not found: install it with pip install "numba-cuda[cu12]" (the nvidia-cuda-nvcc wheel) '
            "or put the CUDA toolkit's bin/ on PATH"
        )
    return path


def run_ptxas(ptx: str, arch: str, ptxas: str | None = None) -> str:
    """``ptxas -v`` on one PTX module; returns its report (stderr)."""
    ptxas = ptxas or find_ptxas()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run(
            [ptxas, "-v", "--gpu-name", arch, "-o", os.path.join(tmp, "kernel.cubin"), src],
            capture_output=True,
            text=True,
        )
    if proc.returncode:
        raise RuntimeError(f"ptxas failed for {arch}:\n{proc.stderr}")
    return proc.stderr + proc.stdout


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_CMEM = re.compile(r"(\d+) bytes cmem\[0\]")
_BARRIERS = re.compile(r"used (\d+) barriers")


def parse_ptxas(text: str) -> dict[str, dict]:
    """``ptxas -v`` output -> ``{entry: {arch, registers, spill_store_bytes, spill_load_bytes,
    stack_frame_bytes, shared_bytes, cmem0_bytes, barriers}}``."""
    out: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = out.setdefault(m.group(1), {"arch": m.group(2), "registers": 0, "spill_store_bytes": 0,
                                                  "spill_load_bytes": 0, "stack_frame_bytes": 0,
                                                  "shared_bytes": 0, "cmem0_bytes": 0, "barriers": 0})
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current["stack_frame_bytes"], current["spill_store_bytes"], current["spill_load_bytes"] = map(
                int, m.groups())
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            for key, pattern in (("shared_bytes", _SMEM), ("cmem0_bytes", _CMEM), ("barriers", _BARRIERS)):
                m = pattern.search(line)
                if m:
                    current[key] = int(m.group(1))
    return out


def _report_here(archs, ptxas: bool = True, source: str | None = None) -> list[dict]:
    path = find_ptxas() if ptxas else None
    records = []
    for module, spec in kernel_specs(source):
        for index, signature in enumerate(spec.signatures):
            for arch in archs:
                ptx = compile_ptx(spec, signature, parse_arch(arch))
                rec = {
                    "kernel": spec.name,
                    "module": module if source else f"gpunn.kernels.{module}",
                    "op": spec.op,
                    "signature": str(signature),
                    "signature_index": index,
                    "arch": arch,
                    "block": spec.block,
                    "declared_shared_bytes": spec.shared_bytes,
                    "ptx_lines": ptx.count("\n"),
                    "f64_lines": f64_lines(ptx),
                }
                if path:
                    entries = parse_ptxas(run_ptxas(ptx, arch, path))
                    if len(entries) != 1:
                        raise RuntimeError(f"{spec.name}: expected one entry in ptxas output, got {list(entries)}")
                    (info,) = entries.values()
                    rec.update(info, arch=arch)
                records.append(rec)
    return records


def kernel_report(archs=DEFAULT_ARCHS, ptxas: bool = True, source: str | None = None) -> list[dict]:
    """One record per (kernel, signature, arch); see the module docstring.  ``source``: a user's
    Python file, whose declared ``KERNELS`` are compiled instead of gpunn's.

    Runs in a subprocess when this process has the CUDA simulator on."""
    archs = [arch_name(a) for a in archs]
    problem = numba_numpy_problem()
    if problem is not None:
        raise RuntimeError(problem)
    if not simulator_on():
        return _report_here(archs, ptxas, source)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    cmd = [sys.executable, "-m", "gpunn.ptx", "--arch", ",".join(archs), "--json"]
    if not ptxas:
        cmd.append("--no-ptxas")
    if source is not None:
        cmd += ["--file", os.path.abspath(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1].removeprefix("gpunn.ptx: ")
        if proc.returncode == 2 and source is not None and "ptxas not found" not in proc.stderr:
            from gpunn.versions import VersionError

            raise VersionError(last.replace(os.path.abspath(source), source))
        raise (PtxasMissing if "ptxas not found" in proc.stderr else RuntimeError)(last)
    return json.loads(proc.stdout)


def format_table(records) -> str:
    """The records as an aligned text table."""
    cols = ("kernel", "arch", "block", "registers", "spill_store_bytes", "spill_load_bytes", "stack_frame_bytes",
            "shared_bytes", "f64")
    rows = [[str(r.get(c, len(r["f64_lines"]) if c == "f64" else "")) for c in cols] for r in records]
    heads = ["kernel", "arch", "block", "regs", "spill st", "spill ld", "stack", "smem", "f64"]
    return text_table(heads, rows, rule=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpunn.ptx", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(DEFAULT_ARCHS), help="comma-separated, e.g. sm_70,sm_80,sm_90")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument("--no-ptxas", action="store_true", help="compile and check PTX only")
    parser.add_argument("--file", metavar="FILE.py", help="the kernels a user's file declares (KERNELS), not gpunn's")
    args = parser.parse_args(argv)
    from gpunn.versions import VersionError

    try:
        records = kernel_report(args.arch.split(","), ptxas=not args.no_ptxas, source=args.file)
    except (PtxasMissing, VersionError) as exc:
        print(f"gpunn.ptx: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a user's kernel that does not compile: one line, naming it
        if args.file is None:
            raise
        text = str(exc).strip().splitlines()
        print(f"gpunn.ptx: {args.file}: a kernel does not compile: {type(exc).__name__}: "
              f"{text[0] if text else ''}", file=sys.stderr)
        return 2
    print(json.dumps(records, indent=1) if args.json else format_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
