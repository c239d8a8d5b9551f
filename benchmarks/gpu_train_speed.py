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

The cosine schedule spans the benchmark's ``--epochs``.  Seven contestants train each network:

1. ``gpunn``       -- ``Trainer(backend="cuda", graphs=True)``: each full-batch step one CUDA graph replay;
2. ``gpunn_eager`` -- the same with ``graphs=False``: every kernel launched from the host;
2b. ``gpunn_fused`` -- ``gpunn`` with the fusions still behind an option (issue 18): the classifier's
                      loss, count and both gradients in 2 launches, and ``--fused-step`` (the whole step
                      as 2 kernels) where the network is narrow (``small``); the default once it wins here;
2c. ``gpunn_own_gemm`` -- ``gpunn`` with gpunn's GEMM (``--gemm numba``) and the classifier: the bias and
                      activation in the forward GEMM's epilogue, each backward but the first layer's one
                      kernel (``gemm_backward``): the default network's step in 10 kernels, against
                      cuBLAS's faster GEMMs in 19;
2d. ``gpunn_tf32``  -- ``gpunn`` with ``--precision tf32``: cuBLAS's TF32 tensor cores for every GEMM (its
                      accuracy is in the table beside FP32's);
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

Each net's ``kernels_per_step`` (per gpunn contestant) counts every kernel one whole step launches
(the gather, which moves the cursor on, to the update; cuBLAS GEMMs included), recorded from one step of a synthetic trainer on
the same backend (:func:`gpunn.profile.step_kernels`); the targets are <= 10 (big) and <= 3 (small).

Also measured: host microseconds per eager op call on the backend (``launch_us``), the host's and the
device's microseconds per replay of the whole step as one graph, default and ten-kernel paths
(``replay_us``: how much of a replay is host time, which decides whether a whole-epoch graph pays), the time from
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
import shlex
import signal
import sys

from benchlib import add_data_options, describe_device, error_text, load_data, report_failure, say, write_json
from gpu_race import CONTESTANTS, NETS, Stopped, on_sigterm, run_net
from host_costs import LAUNCH_CALLS, LAUNCH_WARMUP, REPLAYS, measure_launch, measure_replay, measure_startup

#: the issue's targets
# issue 18's targets (fewer, fuller kernels): each gpunn contestant's seconds per epoch and kernels
# per step; the earlier ones (0.045 s/epoch, 0.6 x PyTorch's graph) were met in November 2026
BIG_S_PER_EPOCH, SMALL_S_PER_EPOCH = 0.015, 0.005
BIG_KERNELS, SMALL_KERNELS = 10, 3
VS_TORCH_GRAPH, VS_TORCH_EAGER = 0.25, 1 / 12
LAUNCH_US, STARTUP_S = 10.0, 2.0


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


# ---------------------------------------------------------------------------- the report


def targets(results):
    """The issue's targets beside the measured numbers: [{what, measured, target, met}]."""
    nets, rows = results["nets"], []

    def spe(net, c):
        return (nets.get(net) or {}).get("seconds_per_epoch", {}).get(c)

    def ratio(a, b):
        return a / b if a is not None and b else None

    def kernels(net, c):
        return ((nets.get(net) or {}).get("kernels_per_step") or {}).get(c)

    big = spe("big", "gpunn")
    launch, startup = results.get("launch_us") or {}, results.get("startup_s") or {}
    per_contestant = []
    for c in ("gpunn", "gpunn_fused", "gpunn_own_gemm", "gpunn_tf32"):
        per_contestant += [
            (f"big: {c} s/epoch", spe("big", c), BIG_S_PER_EPOCH, " s"),
            (f"big: {c} / torch_graph", ratio(spe("big", c), spe("big", "torch_graph")), VS_TORCH_GRAPH, "×"),
            (f"big: {c} kernels per step", kernels("big", c), BIG_KERNELS, ""),
            (f"small: {c} s/epoch", spe("small", c), SMALL_S_PER_EPOCH, " s"),
            (f"small: {c} kernels per step", kernels("small", c), SMALL_KERNELS, "")]
    for what, measured, limit, unit in (
        *per_contestant,
        ("big: gpunn / torch_eager", ratio(big, spe("big", "torch_eager")), VS_TORCH_EAGER, "×"),
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
    replay = results.get("replay_us")
    if replay:
        say(f"\nreplay_us: µs per replay of the default network's whole step as one CUDA graph ({REPLAYS} replays): "
            "the host's to issue it, the device's to finish it")
        if replay.get("error"):
            say(f"  not measured: {replay['error']}")
        for path in (p for p in replay if isinstance(replay[p], dict)):
            r = replay[path]
            say(f"  {path:<9} " + (f"ERROR: {r['error']}" if r.get("error") else
                                   f"host {fmt(r['host_us'], '7.2f')} µs, device {fmt(r['device_us'], '7.2f')} µs "
                                   f"({100 * r['host_share']:.0f}% host), {r['kernels_per_step']} kernels"))
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
               "nets": {}, "launch_us": None, "replay_us": None, "startup_s": None, "notes": [], "targets": []}
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
        measured(results, "launch_us", f"{args.backend} backend", lambda: measure_launch(args.backend))
        save()
    measured(results, "replay_us", f"the whole step as one CUDA graph, {REPLAYS} replays",
             lambda: measure_replay(args.backend))
    save()
    if args.skip_startup:
        notes.append("startup_s: skipped (--skip-startup)")
    else:
        if measured(results, "startup_s", "python -m gpunn train, twice", lambda: measure_startup(args)):
            for i, run in enumerate(results["startup_s"]["runs"], 1):
                if run.get("error"):
                    notes.append(f"startup_s run {i}: {run['error']}")
            notes.append("startup_s: both runs use a fresh $GPUNN_CACHE_DIR: the first compiles every kernel, "
                         "the second loads them from the cache the first filled")
        save()


def measured(results, key, what, measure) -> bool:
    """``results[key] = measure()`` under a heading; a failure is reported and noted, not raised."""
    say(f"\n== {key} ({what})")
    try:
        results[key] = measure()
        return True
    except Exception as exc:
        report_failure(key, exc)
        results["notes"].append(f"{key}: not measured ({error_text(exc)})")
        return False


if __name__ == "__main__":
    sys.exit(main())
