"""Training speed on one GPU: gpunn (CUDA graphs and eager) against PyTorch (eager and one CUDA graph per step).

Usage (from the repository root):

    python benchmarks/gpu_train_speed.py                       # both networks on MNIST, 5 epochs each, all sections
    python benchmarks/gpu_train_speed.py --net big --epochs 3 --json gpu.json
    python benchmarks/gpu_train_speed.py --only gpunn,torch_graph --skip-startup
    python benchmarks/gpu_train_speed.py --backend numpy --synthetic 1000 --only gpunn,gpunn_eager \\
        --skip-startup --skip-launch                           # CPU smoke run (what the test does)

Two networks, as in the issue:

* ``big``:   784-512-512-10 ReLU, batch 128, cross-entropy, SGD lr 0.1 + Nesterov momentum 0.9,
             cosine schedule (gpunn's defaults, ``TrainConfig(hidden=(512, 512))``);
* ``small``: the primer's 784-16-16-10 sigmoid (sigmoid output), MSE, batch 100, plain SGD lr 6.0,
             cosine (as ``examples/seed_network.py``).

The cosine schedule spans the benchmark's ``--epochs``.  Four contestants train each network:

1. ``gpunn``       -- ``Trainer(backend="cuda", graphs=True)``: each full-batch step one CUDA graph replay;
2. ``gpunn_eager`` -- the same with ``graphs=False``: every kernel launched from the host;
3. ``torch_eager`` -- the idiomatic PyTorch loop on the GPU (``torch.optim.SGD``, default foreach update,
                      the step's rate set in the param group);
4. ``torch_graph`` -- PyTorch with zero_grad+forward+loss+backward+SGD captured as one CUDA graph and
                      replayed per batch (as ``shared/gpu/torch_gpu_baseline.py``); the rate lives in a
                      device tensor (fused SGD, ``lr=torch.tensor(...)``) filled before each replay; the
                      partial last batch is dropped.  Its 3 warm-up steps are undone (weights restored,
                      momentum zeroed) before capture, so it trains from the same start as the others.

Every contestant starts from gpunn's initial weights (copied into torch: ``Linear.weight = W.T``),
visits the batches in gpunn's order (``gpunn.data.epoch_permutation(n, seed, epoch)``, uploaded once
per epoch, before the clock starts, as gpunn's Trainer does), with the same optimizer and schedule.
Epochs are interleaved (all contestants run epoch 1, then epoch 2 in a rotated order, ...).  Each
epoch's time is the wall time of its training loop between two device synchronisations (gpunn: the
``EpochStats.seconds`` its Trainer measures so; evaluation is outside it).  The first epoch of each
contestant is a warm-up (compilation, cuBLAS set-up, graph capture) and is left out of the median.

Also measured: host microseconds per eager op call on the backend (``launch_us``), the time from
``python -m gpunn train`` starting to its first queued step, twice (``startup_s``), and the device.
A contestant or section that fails prints its error in its row and the rest still runs; PyTorch is
optional.  The results tables and the issue's targets (measured vs target, "met"/"missed"; nothing
is asserted, the exit status does not depend on them) are printed at the end; ``--json`` writes them
too, after every section (through gpunn.output: whole or not at all), so a run cut short keeps
what it measured.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchlib import (REPO, Unavailable, add_data_options, data_folder, error_text, initial_weights, load_data,
                      median_after_warmup, say, write_json)
from benchlib import versions as benchlib_versions
from torch_twins import TorchContext, TorchEager, TorchGraph

#: TrainConfig fields of each network (everything else: gpunn's defaults); epochs = --epochs
NETS = {
    "big": dict(hidden=(512, 512)),
    "small": dict(hidden=(16, 16), activation="sigmoid", output_activation="sigmoid", loss="mse",
                  batch_size=100, lr=6.0, momentum=0.0, nesterov=False, lr_schedule="cosine"),
}
CONTESTANTS = ("gpunn", "gpunn_eager", "torch_eager", "torch_graph")
#: the issue's targets
BIG_S_PER_EPOCH, SMALL_S_PER_EPOCH = 0.045, 0.045
VS_TORCH_GRAPH, VS_TORCH_EAGER = 0.6, 1 / 12
LAUNCH_US, STARTUP_S = 10.0, 2.0
#: launch_us: calls timed, after this many untimed ones; the flat parameter of the big net
LAUNCH_CALLS, LAUNCH_WARMUP, BIG_PARAMETERS = 2000, 50, 669_706


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=[*NETS, "both"], default="both")
    p.add_argument("--epochs", type=int, default=5,
                   help="epochs per contestant, interleaved; the first is a warm-up, not in the median (default 5)")
    p.add_argument("--backend", default="cuda", help="gpunn's backend (default cuda; numpy for a CPU smoke run)")
    add_data_options(p)
    p.add_argument("--only", default=",".join(CONTESTANTS),
                   help=f"comma-separated contestants (default: all of {', '.join(CONTESTANTS)})")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--skip-startup", action="store_true", help="do not measure the start-up of `python -m gpunn train`")
    p.add_argument("--skip-launch", action="store_true", help="do not measure the host time per eager op call")
    p.add_argument("--startup-timeout", type=float, default=60.0, metavar="S",
                   help="seconds each start-up run may take before it is stopped (default 60)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.synthetic is not None and args.synthetic < 10:
        p.error("--synthetic must be >= 10")
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    for c in args.only:
        if c not in CONTESTANTS:
            p.error(f"--only: unknown contestant {c!r} (expected some of {', '.join(CONTESTANTS)})")
    if not args.only:
        p.error("--only: no contestant named")
    return args


def report_failure(what, exc):
    """One line for the row, and the last frames of the traceback for whoever reads the log."""
    say(f"  !! {what} failed: {error_text(exc)}")
    say("     " + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
        .rstrip().replace("\n", "\n     "))


# ---------------------------------------------------------------------------- data and device


def describe_device(backend):
    """(one line naming the device, {versions}) -- never raises."""
    versions = benchlib_versions()
    if backend != "cuda":
        from gpunn.roofline import cpu_model

        return f"CPU: {cpu_model()} ({backend} backend)", versions
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
                versions[what] = version(v)
                extra.append(f"{what} {version(v)}")
            except Exception:
                pass
        return f"{name}" + (f" ({', '.join(extra)})" if extra else ""), versions
    except Exception as exc:
        return f"unknown GPU ({error_text(exc)})", versions


# ---------------------------------------------------------------------------- contestants


class Stopped(BaseException):
    """SIGTERM (e.g. from ``timeout``): stop measuring, then still print and write what was measured."""


def on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # one is enough: let the report finish
    raise Stopped(f"stopped by signal {signum}")


class GpunnRun:
    """gpunn's Trainer, with CUDA graphs (``gpunn``) or without (``gpunn_eager``)."""

    def __init__(self, name, cfg, data, backend, graphs, notes):
        from gpunn.train import Trainer

        def notice(message):
            message = message.removeprefix("gpunn: ")
            say(f"  [{name}] {message}")
            notes.append(f"{name}: {message}")

        self.name = name
        self.trainer = Trainer(cfg, data, backend=backend, graphs=graphs, progress=False,
                               log=lambda s: None, notice=notice)
        self.info = {"graphs_requested": graphs, "graphs_on_after_construction": bool(self.trainer.graphs_on)}
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
        if i.get("cuda_graphs"):
            return "CUDA graphs: on"
        if "cuda_graphs" in i:
            return f"CUDA graphs: off ({i.get('graphs_note')})"
        return ""


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
    for name, graphs in (("gpunn", True), ("gpunn_eager", False)):
        if name in args.only:
            try:
                runs.append(GpunnRun(name, cfg, data, args.backend, graphs, notes))
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


# ---------------------------------------------------------------------------- launch and start-up


def measure_launch(backend):
    """Host µs per eager op call (device synchronised before and after the timed loop)."""
    import numpy as np

    from gpunn.backend import get_backend

    be = get_backend(backend)
    rng = np.random.default_rng(0)
    x = be.asarray(rng.standard_normal((128, 512), dtype=np.float32))
    b = be.asarray(rng.standard_normal(512, dtype=np.float32))
    out = be.empty((128, 512))
    p = be.asarray(rng.standard_normal(BIG_PARAMETERS, dtype=np.float32))
    g = be.asarray(0.01 * rng.standard_normal(BIG_PARAMETERS, dtype=np.float32))
    v = be.zeros((BIG_PARAMETERS,))
    cases = {
        "_bias_act": (be.unchecked.bias_act, (x, b, "relu", out)),  # (the result keys keep their names)
        "bias_act": (be.bias_act, (x, b, "relu", out)),
        "_sgd_update": (be.unchecked.sgd_update, (p, g, v, 1e-3, 0.9, 0.0, True)),
    }
    result = {"device": be.describe(), "calls": LAUNCH_CALLS, "warmup_calls": LAUNCH_WARMUP,
              "shapes": {"x": [128, 512], "bias": [512], "sgd_param": [BIG_PARAMETERS]}}
    for name, (fn, fargs) in cases.items():
        try:
            for _ in range(LAUNCH_WARMUP):
                fn(*fargs)
            be.synchronize()
            t0 = time.perf_counter()
            for _ in range(LAUNCH_CALLS):
                fn(*fargs)
            be.synchronize()
            result[name] = (time.perf_counter() - t0) / LAUNCH_CALLS * 1e6
            say(f"  {name:<12} {result[name]:8.2f} µs per call")
        except Exception as exc:
            result[name] = None
            result.setdefault("errors", {})[name] = error_text(exc)
            report_failure(f"launch_us/{name}", exc)
    return result


def measure_startup(args):
    """Seconds from just before Popen to the first queued step of the quick start's `python -m gpunn
    train` (one epoch of all of MNIST), twice: the first with an empty kernel cache, the second
    with the cache the first one filled."""
    folder = data_folder(args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    runs = []
    with tempfile.TemporaryDirectory(prefix="gpunn-startup-") as tmp:
        env["GPUNN_CACHE_DIR"] = str(Path(tmp) / "cache")  # run 1 compiles every kernel, run 2 loads them
        for i in (1, 2):
            metrics = Path(tmp) / f"run{i}.json"
            cmd = [sys.executable, "-m", "gpunn", "train", "--backend", args.backend, "--epochs", "1",
                   "--data-dir", str(folder), "--metrics-json", str(metrics)]
            run = {"command": shlex.join(cmd), "seconds_to_first_step": None}
            t0 = time.time()
            proc = None
            try:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        cwd=REPO, env=env)
                try:
                    out, err = proc.communicate(timeout=args.startup_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                    raise TimeoutError(f"still running after {args.startup_timeout:g} s; stopped") from None
                run["wall_s"] = time.time() - t0
                run["returncode"] = proc.returncode
                if proc.returncode != 0:
                    tail = (err or out or "").strip().splitlines()[-3:]
                    raise RuntimeError(f"exit status {proc.returncode}: {' | '.join(tail)}")
                m = json.loads(metrics.read_text())
                first = m.get("first_step_unix_time")
                if first is None:
                    run["error"] = "the metrics JSON has no first_step_unix_time"
                else:
                    run["seconds_to_first_step"] = float(first) - t0
                run["cuda_graphs"] = m.get("cuda_graphs")
            except Exception as exc:
                run.setdefault("wall_s", time.time() - t0)
                run["error"] = error_text(exc)
            finally:
                if proc is not None and proc.poll() is None:   # stopped (SIGTERM) while it ran
                    proc.kill()
                    proc.wait()
            runs.append(run)
            s = run["seconds_to_first_step"]
            say(f"  run {i}: " + (f"first step {s:.2f} s after start" if s is not None else f"no time: {run['error']}")
                + f" (whole run {run['wall_s']:.1f} s)")
    return {"first": runs[0]["seconds_to_first_step"], "second": runs[1]["seconds_to_first_step"], "runs": runs}


# ---------------------------------------------------------------------------- the report


def targets(results):
    """The issue's targets beside the measured numbers: [{what, measured, target, met}]."""
    nets, rows = results["nets"], []

    def spe(net, c):
        return (nets.get(net) or {}).get("seconds_per_epoch", {}).get(c)

    def ratio(a, b):
        return a / b if a is not None and b else None

    big, small = spe("big", "gpunn"), spe("small", "gpunn")
    launch, startup = results.get("launch_us") or {}, results.get("startup_s") or {}
    for what, measured, limit, unit in (
        ("big: gpunn s/epoch", big, BIG_S_PER_EPOCH, " s"),
        ("big: gpunn / torch_graph", ratio(big, spe("big", "torch_graph")), VS_TORCH_GRAPH, "×"),
        ("big: gpunn / torch_eager", ratio(big, spe("big", "torch_eager")), VS_TORCH_EAGER, "×"),
        ("small: gpunn s/epoch", small, SMALL_S_PER_EPOCH, " s"),
        ("eager launch: _bias_act", launch.get("_bias_act"), LAUNCH_US, " µs"),
        ("eager launch: bias_act (checked)", launch.get("bias_act"), LAUNCH_US, " µs"),
        ("eager launch: _sgd_update (669,706)", launch.get("_sgd_update"), LAUNCH_US, " µs"),
        ("second run: first step after start", startup.get("second"), STARTUP_S, " s"),
    ):
        rows.append({"what": what, "measured": measured, "target": limit, "unit": unit.strip(),
                     "met": None if measured is None else bool(measured <= limit)})
    return rows


def fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def print_summary(results, args):
    say("\n" + "=" * 100)
    say(f"RESULTS  device: {results['device']}  ({results['date']})")
    say(f"command: {results['command']}")
    say(f"data: {results.get('data')}")
    if results["notes"]:   # first: the tables and targets below are what a log's tail shows
        say("notes:")
        for note in results["notes"]:
            say(f"  - {note}")
    warm = (f"{args.epochs} epochs each, interleaved; the first is a warm-up, not in the median"
            if args.epochs > 1 else "1 epoch each (no warm-up excluded)")
    say(f"\ntraining: seconds per epoch, median ({warm}); ratio = this ÷ gpunn")
    for key, net in results["nets"].items():
        if net is None:
            continue
        say(f"{net['title']}")
        ref = net["seconds_per_epoch"].get("gpunn")
        w = max(len(c) for c in CONTESTANTS)
        say(f"  {'contestant':<{w}} {'s/epoch':>8} {'min':>8} {'max':>8} {'ratio':>7} {'test acc':>9}  details")
        for c, med in net["seconds_per_epoch"].items():
            if c not in args.only:
                continue
            t = net["epoch_seconds"].get(c)
            acc = net["test_accuracy"].get(c)
            err = net["errors"].get(c)
            timed = t[1:] if t and len(t) > 1 else t
            ratio = f"{med / ref:.2f}" if med is not None and ref else "-"
            detail = f"ERROR: {err}" if err else net["details"].get(c, "")
            say(f"  {c:<{w}} {fmt(med):>8} {fmt(min(timed) if timed else None):>8} "
                f"{fmt(max(timed) if timed else None):>8} {ratio:>7} "
                f"{(f'{100 * acc:.2f}%' if acc is not None else '-'):>9}  {detail}")
    launch = results.get("launch_us")
    if launch:
        say(f"\nlaunch_us: host µs per eager op call, {LAUNCH_CALLS} calls after {LAUNCH_WARMUP} "
            f"(synchronised before and after), {launch.get('device', '')}")
        for name in ("_bias_act", "bias_act", "_sgd_update"):
            err = (launch.get("errors") or {}).get(name)
            say(f"  {name:<12} {fmt(launch.get(name), '8.2f')} µs" + (f"  ERROR: {err}" if err else ""))
    startup = results.get("startup_s")
    if startup:
        say("\nstartup_s: `python -m gpunn train --epochs 1` (all of MNIST), seconds from its start to its first queued step")
        for i, run in enumerate(startup.get("runs", []), 1):
            label = "run 1 (empty kernel cache)" if i == 1 else "run 2 (its cache: the target)"
            s = run.get("seconds_to_first_step")
            say(f"  {label:<34} {fmt(s, '6.2f')} s  (whole run {fmt(run.get('wall_s'), '.1f')} s)"
                + (f"  ERROR: {run['error']}" if run.get("error") else ""))
    say("\ntargets (from the issue; measured vs target):")
    if args.backend != "cuda":
        say(f"  (the targets are for the cuda backend; this run used {args.backend})")
    for t in results["targets"]:
        status = "not measured" if t["met"] is None else "met" if t["met"] else "missed"
        unit = "" if t["unit"] == "×" else " " + t["unit"]
        mspec, tspec = {"µs": (".2f", ".0f"), "s": (".3f", ".3f")}.get(t["unit"], (".3f", ".3f"))
        say(f"  {t['what']:<38} {fmt(t['measured'], mspec):>9}{unit}  vs ≤ {format(t['target'], tspec)}{unit}"
            f"  {status}")


def main(argv=None):
    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    device, versions = describe_device(args.backend)
    results = {"device": device,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": command, "backend": args.backend, "epochs": args.epochs, "versions": versions,
               "nets": {}, "launch_us": None, "startup_s": None, "notes": [], "targets": []}
    notes = results["notes"]
    skipped = [c for c in CONTESTANTS if c not in args.only]
    if skipped:
        notes.append(f"not run (not in --only): {', '.join(skipped)}")
    from gpunn.env import simulator_requested

    if args.backend == "cuda" and simulator_requested():
        notes.append("NUMBA_ENABLE_CUDASIM is set: gpunn's cuda backend is Numba's CPU simulator here, not a GPU")
    if args.epochs > 1:
        notes.append("the first epoch of each contestant is a warm-up and is not in the median")
    notes.append("gpunn's epoch time is EpochStats.seconds: its training loop between two device "
                 "synchronisations (the per-epoch evaluation is outside it)")

    def save():
        results["targets"] = targets(results)
        if args.json:
            try:
                write_json(args.json, results)  # whole or not at all, as every file gpunn writes
            except Exception as exc:
                report_failure(f"writing {args.json}", exc)

    say(f"device: {device}\nversions: {', '.join(f'{k} {v}' for k, v in versions.items())}")
    keys = list(NETS) if args.net == "both" else [args.net]
    data = None
    try:
        data, what = load_data(args)
        results["data"] = what
        say(f"data: {what}")
    except Exception as exc:
        report_failure("loading the data", exc)
        notes.append(f"no data ({error_text(exc)}): no network was trained")
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        measure_all(args, data, keys, results, save)
    except Stopped as exc:
        say(f"\n!! {exc}: reporting what was measured")
        notes.append(f"the run was cut short ({exc}); sections after that point were not measured")
    save()
    print_summary(results, args)
    return 0


def measure_all(args, data, keys, results, save):
    notes = results["notes"]
    for key in keys:
        if data is None:
            results["nets"][key] = None
            continue
        try:
            run_net(key, data, args, notes, results["nets"])
        except Exception as exc:   # a bug outside any one contestant: the other sections still run
            report_failure(f"net {key}", exc)
            notes.append(f"{key}: not measured ({error_text(exc)})")
            results["nets"][key] = None
        finally:
            save()
    if args.skip_launch:
        notes.append("launch_us: skipped (--skip-launch)")
    else:
        say(f"\n== launch_us ({args.backend} backend)")
        try:
            results["launch_us"] = measure_launch(args.backend)
        except Exception as exc:
            report_failure("launch_us", exc)
            notes.append(f"launch_us: not measured ({error_text(exc)})")
        save()
    if args.skip_startup:
        notes.append("startup_s: skipped (--skip-startup)")
    else:
        say("\n== startup_s (python -m gpunn train, twice)")
        try:
            results["startup_s"] = measure_startup(args)
            for i, run in enumerate(results["startup_s"]["runs"], 1):
                if run.get("error"):
                    notes.append(f"startup_s run {i}: {run['error']}")
            notes.append("startup_s: both runs use a fresh $GPUNN_CACHE_DIR: the first compiles every kernel, "
                         "the second loads them from the cache the first filled")
        except Exception as exc:
            report_failure("startup_s", exc)
            notes.append(f"startup_s: not measured ({error_text(exc)})")
        save()


if __name__ == "__main__":
    sys.exit(main())
