"""What the training benchmarks share: their data options and loader, the machine's description,
gpunn's initial weights and a PyTorch twin of a gpunn model built from them, the primer's loss in
PyTorch, the median, and the JSON they write (through :mod:`gpunn.output`: whole or not at all).

``benchmarks/train_speed.py`` (the CPU) and ``benchmarks/gpu_train_speed.py`` (one GPU) import it
from beside them, and ``benchmarks/torch_twins.py`` (the PyTorch loops both race) builds on it.  Nothing heavy is imported here until a function needs it: the CPU benchmark
sets the BLAS thread count before NumPy is first imported.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing


# ---------------------------------------------------------------------------- messages


def say(*parts):
    print(*parts, flush=True)


def error_text(exc) -> str:
    """``Type: first line`` of an exception, for a result's row."""
    first = str(exc).splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def report_failure(what, exc):
    """One line for the row, and the last frames of the traceback for whoever reads the log."""
    say(f"  !! {what} failed: {error_text(exc)}")
    say("     " + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
        .rstrip().replace("\n", "\n     "))


class Unavailable(Exception):
    """A contestant that cannot run here (no PyTorch, no CUDA device): its row says why."""


# ---------------------------------------------------------------------------- data


def add_data_options(p) -> None:
    p.add_argument("--data", default=None, help="MNIST folder (default: $GPUNN_DATA_DIR, else ../shared/data/mnist)")
    p.add_argument("--train-samples", type=int, default=None, metavar="N", help="use the first N training images")
    p.add_argument("--synthetic", type=int, default=None, metavar="N",
                   help="random data with N training and N/5 test samples instead of MNIST")


def data_folder(args) -> Path:
    return Path(args.data or os.environ.get("GPUNN_DATA_DIR") or REPO.parent / "shared" / "data" / "mnist")


def load_data(args):
    """``(Dataset, one line saying what it is)``: MNIST from :func:`data_folder` (never downloaded
    here), or ``--synthetic N`` random clusters (N training and N/5 test images, seed 0)."""
    import numpy as np

    from gpunn.data import Dataset, load_mnist

    if args.synthetic:
        rng = np.random.default_rng(0)
        n, m = args.synthetic, max(1, args.synthetic // 5)
        centers = rng.random((10, 784), dtype=np.float32)

        def split(k):
            y = rng.integers(0, 10, k).astype(np.int32)
            x = np.clip(centers[y] + 0.3 * rng.standard_normal((k, 784), dtype=np.float32), 0, 1)
            return x.astype(np.float32), y

        (tx, ty), (vx, vy) = split(n), split(m)
        return Dataset(tx, ty, vx, vy, 10, "synthetic", "random clusters"), f"synthetic ({n} train, {m} test)"
    folder = data_folder(args)
    d = load_mnist(folder, download=False, progress=False, train_samples=args.train_samples)
    return d, f"{d.name or 'MNIST-format'} from {folder} ({len(d.train_y)} train, {len(d.test_y)} test)"


# ---------------------------------------------------------------------------- the machine


def versions() -> dict:
    """The versions of Python, NumPy and the packages a benchmark may use, read without importing
    them (torch takes seconds to import)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "cupy", "nvmath-python", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def describe_device(backend):
    """(one line naming the device, {versions}) -- never raises."""
    found = versions()
    if backend != "cuda":
        from gpunn.roofline import cpu_model

        return f"CPU: {cpu_model()} ({backend} backend)", found
    try:
        import cupy

        rt = cupy.cuda.runtime
        name = rt.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)

        def version(v):
            return f"{v // 1000}.{v % 1000 // 10}"

        extra = []
        for what, get in (("driver", rt.driverGetVersion), ("CUDA runtime", rt.runtimeGetVersion)):
            try:
                v = get()
                found[what] = version(v)
                extra.append(f"{what} {version(v)}")
            except Exception:
                pass
        return f"{name}" + (f" ({', '.join(extra)})" if extra else ""), found
    except Exception as exc:
        return f"unknown GPU ({error_text(exc)})", found


def describe_cpu(threads: int | None = None) -> str:
    """The CPU (gpunn.roofline's name for it), cores, threads, and the BLAS NumPy runs."""
    import numpy as np

    from gpunn.roofline import cpu_model

    blas = "?"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # an older NumPy has no mode="dicts"
        pass
    try:   # the kernel OpenBLAS runs (OPENBLAS_CORETYPE forces one), when threadpoolctl is installed
        from threadpoolctl import threadpool_info

        kernels = {i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"}
        blas += f", {'/'.join(sorted(k for k in kernels if k))} kernels" if any(kernels) else ""
    except ImportError:
        pass
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    return (f"{cpu_model()}, {os.cpu_count()} cores" + (f", {threads} threads" if threads else "")
            + f"; Python {platform.python_version()}, NumPy {np.__version__} ({blas}, "
            f"OPENBLAS_CORETYPE={coretype or 'unset'})")


# ---------------------------------------------------------------------------- a gpunn model's twin


def initial_weights(model) -> list:
    """``[(W (in, out), b (out,)), ...]`` of a gpunn model's dense layers, as host float32 copies."""
    be = model.backend
    return [(be.to_numpy(layer.W).copy(), be.to_numpy(layer.b).copy()) for layer in model.layers
            if hasattr(layer, "W")]


def torch_twin(torch, weights, activation: str, output_activation: str, device="cpu"):
    """The PyTorch ``nn.Sequential`` of a gpunn MLP: a ``Linear`` per ``(W, b)`` of ``weights``
    holding those values (torch keeps a weight as (out, in): ``W.T``), each hidden one followed by
    ``activation`` and the last by ``output_activation`` (identity: nothing)."""
    nn = torch.nn
    modules = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "silu": nn.SiLU,
               "gelu": lambda: nn.GELU(approximate="tanh")}
    layers = []
    for i, (w, b) in enumerate(weights):
        linear = nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        act = activation if i < len(weights) - 1 else output_activation
        if act != "identity":
            layers.append(modules[act]())
    return nn.Sequential(*layers).to(device)


def torch_loss(torch, loss: str, num_classes: int, device="cpu"):
    """``loss(out, labels)`` in PyTorch as gpunn defines it: cross-entropy of logits, or the
    primer's quadratic cost ``C = 1/(2n) Σ ‖out − onehot‖²`` (gpunn's MSE)."""
    if loss == "mse":
        eye = torch.eye(num_classes, device=device)
        return lambda out, y: 0.5 * ((out - eye.index_select(0, y)) ** 2).sum(1).mean()
    return torch.nn.functional.cross_entropy


# ---------------------------------------------------------------------------- numbers and files


def median_after_warmup(times):
    """Median of the epochs after the first (the warm-up); of all of them when there is only one."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def write_json(path, obj) -> None:
    """Write the results (anything JSON cannot hold as its text), whole or not at all."""
    from gpunn.output import write_json as write

    write(path, obj, default=str)
