"""Training speed on the CPU: gpunn's numpy backend against PyTorch and a textbook NumPy loop.

Usage (from the repository root):

    python benchmarks/train_speed.py                     # both networks on real MNIST, 5 epochs each
    python benchmarks/train_speed.py --net big --epochs 3
    python benchmarks/train_speed.py --synthetic 2000    # random data, no MNIST needed (smoke test)
    python benchmarks/train_speed.py --json results.json

Two networks, as in the issue:

* ``big``:   784-512-512-10 ReLU, batch 128, cross-entropy, SGD lr 0.05 + momentum 0.9;
* ``small``: 784-16-16-10 sigmoid (sigmoid output), batch 100, the primer's MSE, SGD lr 3.0.

Every contestant trains the same model from the same initial weights (gpunn's, copied
into the others), visits the batches in the same order (gpunn's ``epoch_permutation``),
with the same optimizer and the same number of threads (``--threads``, default: all
cores; set for OpenBLAS/OpenMP before NumPy is imported, and ``torch.set_num_threads``).
Epochs are interleaved -- gpunn, torch, numpy, then the next epoch in a rotated order --
so that a machine busy with something else slows all three alike.  Only the training
loop is timed (the epoch's batches: gather, forward, loss, backward, update); the test
accuracy after the last epoch and one timed pass over the test set are reported beside it.

PyTorch is optional: when it does not import, its row says why and the rest still runs.
Nothing here is a test: it prints numbers (and writes them with ``--json``).

gpunn's row says which numpy path ran: the Numba-fused loops when Numba is installed,
else the pure-NumPy reference (``GPUNN_FUSED=0`` forces the latter).  Where a step's
time goes, op by op: ``gpunn profile --backend numpy`` with the same model options.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchlib import Unavailable, add_data_options, describe_cpu, initial_weights, load_data, write_json

NETS = {
    "big": dict(hidden=(512, 512), activation="relu", loss="cross-entropy", output_activation="identity",
                batch_size=128, lr=0.05, momentum=0.9, target=0.90),
    "small": dict(hidden=(16, 16), activation="sigmoid", loss="mse", output_activation="sigmoid",
                  batch_size=100, lr=3.0, momentum=0.0, target=0.35),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=[*NETS, "both"], default="both")
    p.add_argument("--epochs", type=int, default=5, help="epochs per contestant, interleaved (default 5)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="BLAS/OpenMP threads for every contestant (default: all cores)")
    add_data_options(p)
    p.add_argument("--only", default="gpunn,torch,numpy", help="comma-separated contestants (default: all three)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.threads < 1:
        p.error("--epochs and --threads must be >= 1")
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    for c in args.only:
        if c not in ("gpunn", "torch", "numpy"):
            p.error(f"--only: unknown contestant {c!r}")
    return args


def set_threads(n):
    """Before NumPy (OpenBLAS) or torch is imported: their thread pools read these once."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


# ---------------------------------------------------------------------------- contestants


class Gpunn:
    """gpunn's own Trainer on the numpy backend: what ``gpunn train`` runs."""

    label = "gpunn"

    def __init__(self, cfg, data):
        from gpunn.train import Trainer

        self.trainer = Trainer(cfg, data, backend="numpy", progress=False, log=lambda s: None)
        self.label = f"gpunn [{self.trainer.backend.describe()}]"

    def epoch(self, e):
        # the Trainer draws epoch e's permutation itself (epoch_permutation(n, seed, epoch))
        return self.trainer.run_epoch().seconds

    def accuracy(self):
        from gpunn.train import evaluate

        t = self.trainer
        t0 = time.perf_counter()
        acc = evaluate(t.model, t.test_x, t.test_y, t.cfg.eval_batch_size)
        return acc, time.perf_counter() - t0


class Torch:
    """The idiomatic PyTorch loop (benchmarks/torch_twins.py's TorchEager) on the CPU: the twin of
    gpunn's model, torch.optim.SGD, zero_grad/forward/loss/backward/step."""

    def __init__(self, cfg, data, weights, threads):
        import torch

        from gpunn.optim import Schedule
        from torch_twins import TorchContext, TorchEager

        torch.set_num_threads(threads)
        cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "")()
        self.label = f"pytorch {torch.__version__}" + (f" [{cap}]" if cap else "")
        steps = -(-len(data.train_y) // cfg.batch_size)
        schedule = Schedule(cfg.lr_schedule, cfg.lr, cfg.epochs, steps)
        self.run = TorchEager(TorchContext("cpu", cfg, data, weights, schedule, steps))

    def epoch(self, e):
        return self.run.epoch(e)

    def accuracy(self):
        t0 = time.perf_counter()
        acc = self.run.accuracy()
        return acc, time.perf_counter() - t0


class Textbook:
    """A plain textbook NumPy loop: new arrays every step, the formulas as written."""

    label = "textbook numpy"

    def __init__(self, net, data, weights):
        import numpy as np

        self.np, self.net, self.data = np, net, data
        self.params = [(w.copy(), b.copy()) for w, b in weights]
        self.vel = [(np.zeros_like(w), np.zeros_like(b)) for w, b in weights]
        self.onehot = np.eye(data.num_classes, dtype=np.float32)[data.train_y]

    def _act(self, z, act):
        np = self.np
        if act == "relu":
            return np.maximum(z, 0)
        if act == "sigmoid":
            return 1 / (1 + np.exp(-z))
        return z

    def forward(self, x):
        acts, last = [x], len(self.params) - 1
        for i, (w, b) in enumerate(self.params):
            acts.append(self._act(acts[-1] @ w + b, self.net["activation"] if i < last else self.net["output_activation"]))
        return acts

    def epoch(self, e):
        from gpunn.data import epoch_permutation

        np, net = self.np, self.net
        perm = epoch_permutation(len(self.data.train_y), 0, e)  # the batches gpunn's Trainer visits
        x, y, bs, lr, mom = self.data.train_x, self.data.train_y, net["batch_size"], net["lr"], net["momentum"]
        lr, mom = np.float32(lr), np.float32(mom)
        t0 = time.perf_counter()
        total = 0.0
        with np.errstate(over="ignore"):
            for start in range(0, len(perm), bs):
                idx = perm[start:start + bs]
                xb, yb, n = x[idx], y[idx], len(idx)
                acts = self.forward(xb)
                out = acts[-1]
                if net["loss"] == "mse":
                    diff = out - self.onehot[idx]
                    total += float((diff * diff).sum() / (2 * n))
                    delta = diff / n * out * (1 - out)            # sigmoid output: y (1 - y)
                else:
                    e = np.exp(out - out.max(axis=1, keepdims=True))
                    p = e / e.sum(axis=1, keepdims=True)
                    total += float(-np.log(p[np.arange(n), yb]).mean())
                    delta = p
                    delta[np.arange(n), yb] -= 1
                    delta /= n
                grads = [None] * len(self.params)
                for i in reversed(range(len(self.params))):
                    w, _ = self.params[i]
                    grads[i] = (acts[i].T @ delta, delta.sum(axis=0))
                    if i:
                        a = acts[i]
                        delta = delta @ w.T
                        delta = delta * (a > 0) if net["activation"] == "relu" else delta * a * (1 - a)
                for (w, b), (vw, vb), (gw, gb) in zip(self.params, self.vel, grads):
                    if mom:
                        vw *= mom
                        vw += gw
                        vb *= mom
                        vb += gb
                        gw, gb = vw, vb
                    w -= lr * gw
                    b -= lr * gb
        return time.perf_counter() - t0

    def accuracy(self):
        t0 = time.perf_counter()
        with self.np.errstate(over="ignore"):
            pred = self.forward(self.data.test_x)[-1].argmax(axis=1)
        return float((pred == self.data.test_y).mean()), time.perf_counter() - t0


# ---------------------------------------------------------------------------- the run


def run_net(key, data, args):
    from gpunn.train import TrainConfig

    net = NETS[key]
    cfg = TrainConfig(hidden=net["hidden"], activation=net["activation"], loss=net["loss"],
                      output_activation=net["output_activation"], batch_size=net["batch_size"],
                      lr=net["lr"], momentum=net["momentum"], nesterov=False, lr_schedule="constant",
                      epochs=10**6, seed=0)
    sizes = [data.train_x.shape[1], *net["hidden"], data.num_classes]
    title = (f"{'-'.join(map(str, sizes))} {net['activation']}, batch {net['batch_size']}, {net['loss']}, "
             f"SGD lr {net['lr']}" + (f" + momentum {net['momentum']}" if net["momentum"] else ""))
    gp = Gpunn(cfg, data)   # built first: its initial weights are everyone's
    weights = initial_weights(gp.trainer.model)
    contestants, missing = [], {}
    for name in args.only:
        if name == "gpunn":
            contestants.append(gp)
        elif name == "numpy":
            contestants.append(Textbook(net, data, weights))
        else:
            try:
                contestants.append(Torch(cfg, data, weights, args.threads))
            except (ImportError, Unavailable) as exc:
                missing["pytorch"] = f"not installed ({exc}); pip install torch==2.13.0 to compare"
    times = {c.label: [] for c in contestants}
    for e in range(args.epochs):
        k = e % len(contestants)
        for c in contestants[k:] + contestants[:k]:   # rotate who goes first
            times[c.label].append(c.epoch(e))
    rows = []
    for c in contestants:
        acc, eval_s = c.accuracy()
        t = times[c.label]
        rows.append({"name": c.label, "kind": type(c).__name__.lower(), "median_s": statistics.median(t),
                     "min_s": min(t), "max_s": max(t), "epochs_s": t, "test_accuracy": acc, "eval_s": eval_s})
    return {"net": key, "title": title, "rows": rows, "missing": missing, "target": net["target"]}


def report(result, epochs):
    print(f"\n{result['title']}  ({epochs} epochs each, interleaved)")
    rows = result["rows"]
    by_kind = {r["kind"]: r for r in rows}
    ref = by_kind.get("gpunn")
    w = max([len(r["name"]) for r in rows] + [len(n) for n in result["missing"]] + [10])
    print(f"  {'':<{w}} {'s/epoch':>8} {'min':>7} {'max':>7} {'test acc':>9} {'eval s':>7} {'gpunn ÷ this':>13}")
    for r in rows:
        ratio = f"{ref['median_s'] / r['median_s']:.2f}" if ref else "-"
        print(f"  {r['name']:<{w}} {r['median_s']:8.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} "
              f"{100 * r['test_accuracy']:8.2f}% {r['eval_s']:7.3f} {ratio:>13}")
    for name, why in result["missing"].items():
        print(f"  {name:<{w}} {why}")
    torch_row = by_kind.get("torch")
    if ref and torch_row:
        ratio = ref["median_s"] / torch_row["median_s"]
        diff = 100 * (ref["test_accuracy"] - torch_row["test_accuracy"])
        result["ratio_vs_torch"] = ratio
        print(f"  gpunn ÷ pytorch = {ratio:.2f} (target ≤ {result['target']:.2f}: "
              f"{'met' if ratio <= result['target'] else 'NOT met'}); "
              f"test accuracy gpunn − pytorch = {diff:+.2f} points")


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    data, what = load_data(args)
    machine = describe_cpu(args.threads)
    print(f"machine: {machine}\ndata: {what}")
    results = []
    for key in (NETS if args.net == "both" else [args.net]):
        results.append(run_net(key, data, args))
        report(results[-1], args.epochs)
    if args.json:
        write_json(args.json, {"machine": machine, "data": what, "epochs": args.epochs, "threads": args.threads,
                               "command": " ".join(sys.argv), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
