"""One network raced on one device: gpunn's Trainer (CUDA graphs on and off) against the PyTorch
twins (benchmarks/torch_twins.py), the same initial weights, batches and schedule, epochs
interleaved.  ``benchmarks/gpu_train_speed.py`` runs it for each network and reports."""
from __future__ import annotations

import gc
import signal

from benchlib import Unavailable, error_text, initial_weights, median_after_warmup, report_failure, say
from torch_twins import TorchContext, TorchEager, TorchGraph

#: TrainConfig fields of each network (everything else: gpunn's defaults); epochs = --epochs
NETS = {
    "big": dict(hidden=(512, 512)),
    "small": dict(hidden=(16, 16), activation="sigmoid", output_activation="sigmoid", loss="mse",
                  batch_size=100, lr=6.0, momentum=0.0, nesterov=False, lr_schedule="cosine"),
}
CONTESTANTS = ("gpunn", "gpunn_eager", "gpunn_fused", "gpunn_own_gemm", "gpunn_tf32", "torch_eager",
               "torch_graph")
#: gpunn's contestants: (name, CUDA graphs, the cuda backend's options, --fused-step where the net allows).
#: ``gpunn_fused``, ``gpunn_own_gemm`` and ``gpunn_tf32`` are what is still behind an option (issue 18),
#: each the default (TF32: an option beside FP32) once a GPU says it wins
GPUNN_RUNS = (("gpunn", True, {}, False), ("gpunn_eager", False, {}, False),
              ("gpunn_fused", True, {"versions": {"softmax_cross_entropy": "classifier"}}, True),
              ("gpunn_own_gemm", True, {"gemm": "numba", "versions": {"softmax_cross_entropy": "classifier"}}, False),
              ("gpunn_tf32", True, {"precision": "tf32"}, False))


class Stopped(BaseException):
    """SIGTERM (e.g. from ``timeout``): stop measuring, then still print and write what was measured."""


def on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # one is enough: let the report finish
    raise Stopped(f"stopped by signal {signum}")


class GpunnRun:
    """gpunn's Trainer, with CUDA graphs (``gpunn``) or without (``gpunn_eager``)."""

    def __init__(self, name, cfg, data, backend, graphs, notes, options=None, fused=False):
        from gpunn.backend import get_backend
        from gpunn.train import Trainer
        from gpunn.profile import step_kernels

        def notice(message):
            message = message.removeprefix("gpunn: ")
            say(f"  [{name}] {message}")
            notes.append(f"{name}: {message}")

        self.name = name
        if options:
            if backend != "cuda":
                raise Unavailable(f"{', '.join(options)}: the cuda backend's options; this run uses {backend}")
            backend = get_backend(backend, **options)
        fused_step = fused  # the fused contestant: the whole step as narrow_step where the net allows
        try:
            self.trainer = Trainer(cfg, data, backend=backend, graphs=graphs, progress=False,
                                   log=lambda s: None, notice=notice, fused_step=fused_step)
        except ValueError as exc:
            if not fused_step:
                raise
            fused_step = False
            notice(f"no --fused-step: {exc}")
            self.trainer = Trainer(cfg, data, backend=backend, graphs=graphs, progress=False,
                                   log=lambda s: None, notice=notice)
        kernels, how = step_kernels(cfg, self.trainer.backend, fused_step)  # a synthetic trainer's: ours untouched
        self.info = {"graphs_requested": graphs, "graphs_on_after_construction": bool(self.trainer.graphs_on),
                     "options": {k: v for k, v in (options or {}).items()}, "fused_step": fused_step, "kernels_per_step": None if kernels is None else len(kernels),
                     "kernels_counted": how, "kernels": None if kernels is None else [k for _, k in kernels]}
        self.test_accuracy = None

    def epoch(self, e):
        t = self.trainer
        if t.epoch != e:  # the Trainer draws epoch_permutation(n, seed, t.epoch) itself
            raise RuntimeError(f"{self.name}: trainer is at epoch {t.epoch}, the benchmark at {e}")
        stats = t.run_epoch()   # .seconds: the training loop only, synchronised before and after
        self.test_accuracy = stats.test_accuracy
        if "cuda_graphs" not in self.info:
            self.info["cuda_graphs"] = t.graphs_used
            if not self.info["cuda_graphs"]:
                self.info["graphs_note"] = t.graphs_note
                say(f"  [{self.name}] trained without CUDA graphs: {t.graphs_note}")
        return stats.seconds

    def accuracy(self):
        return self.test_accuracy

    def describe(self):
        i = self.info
        kernels = f"; {i['kernels_per_step']} kernels/step" if i.get("kernels_per_step") is not None else ""
        versions = "".join(f"; {op}: {v}" for op, v in i.get("options", {}).get("versions", {}).items())
        versions += f"; {i['options']['precision']}" if "precision" in i.get("options", {}) else ""
        versions += "; --fused-step" if i.get("fused_step") else ""
        if i.get("cuda_graphs"):
            return f"CUDA graphs: on{kernels}{versions}"
        if "cuda_graphs" in i:
            return f"CUDA graphs: off ({i.get('graphs_note')}){kernels}{versions}"
        return kernels.removeprefix("; ") + versions


def first_weights(cfg, data, trainer=None):
    """gpunn's initial weights (:func:`benchlib.initial_weights`): a fresh trainer's (before any
    step), else the same model built on the numpy backend (same seed, same float64 -> float32 values)."""
    if trainer is not None:
        return initial_weights(trainer.model)
    from gpunn.backend import get_backend
    from gpunn.train import build_model

    return initial_weights(build_model(cfg, data.train_x.shape[1], int(data.num_classes), get_backend("numpy")))


def net_title(key, cfg, n):
    sizes = [784, *cfg.hidden, 10]
    mom = (f" + {'Nesterov ' if cfg.nesterov else ''}momentum {cfg.momentum:g}" if cfg.momentum else "")
    return (f"{key}: {'-'.join(map(str, sizes))} {cfg.activation}"
            f"{', ' + cfg.output_activation + ' output' if cfg.output_activation != 'identity' else ''}, "
            f"batch {cfg.batch_size}, {cfg.loss}, SGD lr {cfg.lr:g}{mom}, {cfg.lr_schedule} over {cfg.epochs} epochs; "
            f"{n} training samples")


def run_net(key, data, args, notes, nets):
    """Train network ``key`` with every contestant in ``--only``, epochs interleaved; its result
    goes into ``nets[key]`` at once (a run stopped part-way still reports the epochs that finished)."""
    from gpunn.train import TrainConfig

    cfg = TrainConfig(**NETS[key], epochs=args.epochs, seed=0)
    n = int(data.train_x.shape[0])
    title = net_title(key, cfg, n)
    say(f"\n== {title}")
    result = nets[key] = {   # every contestant has a key: null where it did not run (see errors, notes)
        "title": title, "seconds_per_epoch": {c: None for c in CONTESTANTS},
        "epoch_seconds": {c: None for c in CONTESTANTS}, "test_accuracy": {c: None for c in CONTESTANTS},
        "errors": {}, "details": {},
        "config": {**cfg.as_dict(), "train_samples": n, "test_samples": int(data.test_x.shape[0]),
                   "steps_per_epoch": -(-n // cfg.batch_size), "backend": args.backend}}

    def failed(name, exc):
        result["errors"][name] = error_text(exc)
        notes.append(f"{key}/{name}: {error_text(exc)}")
        if isinstance(exc, Unavailable):
            say(f"  {name}: not run: {exc}")
        else:
            report_failure(f"{key}/{name}", exc)

    runs = contestants(key, cfg, data, args, notes, result, failed)
    times, stopped = {r.name: [] for r in runs}, None
    try:
        interleave(runs, times, args, result, failed)
    except Stopped as exc:   # report the epochs that finished, then stop
        stopped = exc
        notes.append(f"{key}: {exc} during the epochs; the medians use the epochs that finished")
    for r in runs:
        t = times[r.name]
        if t:
            result["epoch_seconds"][r.name] = t
            if r.name not in result["errors"]:
                result["seconds_per_epoch"][r.name] = median_after_warmup(t)
        try:
            result["details"][r.name] = r.describe()
            if r.name not in result["errors"]:
                result["test_accuracy"][r.name] = r.accuracy()
        except Exception as exc:
            failed(r.name, exc)
        if isinstance(r, GpunnRun):
            result["details"][r.name + "_graphs"] = r.info
            result.setdefault("kernels_per_step", {})[r.name] = r.info["kernels_per_step"]
    for tg in (r for r in runs if isinstance(r, TorchGraph)):
        notes.append(f"{key}/torch_graph: the partial last batch is dropped ({len(tg.batches)} full batches, "
                     f"{tg.dropped} samples not trained per epoch); its 3 warm-up steps were undone before capture")
        if tg.mode != "device lr":
            notes.append(f"{key}/torch_graph: ran at a constant lr (a device-tensor lr could not be captured: "
                         f"{tg.attempts[0]})")
    for r in runs:   # free the device memory before the next net
        r.__dict__.clear()
    del runs
    gc.collect()
    if stopped is not None:
        raise stopped
    return result


def contestants(key, cfg, data, args, notes, result, failed):
    """The contestants of one net that could be built, in CONTESTANTS order (``failed`` gets the rest).
    gpunn's come first: a fresh trainer's weights are everyone's initial weights."""
    from gpunn.optim import Schedule

    runs = []
    for name, graphs, options, fused in GPUNN_RUNS:
        if name in args.only:
            try:
                runs.append(GpunnRun(name, cfg, data, args.backend, graphs, notes, options, fused))
            except Exception as exc:
                failed(name, exc)
    weights = None
    try:
        weights = first_weights(cfg, data, runs[0].trainer if runs else None)
    except Exception as exc:
        report_failure(f"{key}: reading the initial weights", exc)
        notes.append(f"{key}: could not read gpunn's initial weights: {error_text(exc)}")
    torch_names = [c for c in ("torch_eager", "torch_graph") if c in args.only]
    if torch_names:
        try:
            if weights is None:
                raise Unavailable("no initial weights from gpunn")
            steps_per_epoch = result["config"]["steps_per_epoch"]
            schedule = Schedule(cfg.lr_schedule, cfg.lr, cfg.epochs, steps_per_epoch, cfg.step_size, cfg.gamma)
            ctx = TorchContext(args.backend, cfg, data, weights, schedule, steps_per_epoch)
            result["config"]["torch_float32_matmul_precision"] = ctx.matmul_precision
            for name, cls in (("torch_eager", TorchEager), ("torch_graph", TorchGraph)):
                if name in torch_names:
                    try:
                        runs.append(cls(ctx))
                    except Exception as exc:
                        failed(name, exc)
        except Exception as exc:
            for name in torch_names:
                failed(name, exc)
    order = [c for c in CONTESTANTS if c in args.only]
    return sorted(runs, key=lambda r: order.index(r.name))


def interleave(runs, times, args, result, failed):
    """Epoch e of every run, in an order rotated by e, then e + 1, each epoch's seconds appended to
    ``times[name]``; a run that fails drops out (Stopped, on SIGTERM, leaves what finished)."""
    live = list(runs)
    for e in range(args.epochs):
        k = e % len(live) if live else 0
        line = []
        for r in live[k:] + live[:k]:   # rotate who goes first
            try:
                times[r.name].append(r.epoch(e))
                line.append(f"{r.name} {times[r.name][-1]:.4f} s")
            except Exception as exc:
                failed(r.name, exc)
                line.append(f"{r.name} FAILED")
        live = [r for r in live if r.name not in result["errors"]]
        say(f"  epoch {e + 1}/{args.epochs}{' (warm-up)' if e == 0 and args.epochs > 1 else ''}: "
            + ", ".join(line))
