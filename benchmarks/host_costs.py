"""The host's costs on a backend: microseconds per eager op call (``launch_us``), the host's and the
device's microseconds per replay of the whole step as one CUDA graph (``replay_us``), and the seconds
from ``python -m gpunn train`` starting to its first queued step (``startup_s``)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, data_folder, error_text, report_failure, say

#: launch_us: calls timed, after this many untimed ones; the flat parameter of the big net
LAUNCH_CALLS, LAUNCH_WARMUP, BIG_PARAMETERS = 2000, 50, 669_706
#: replay_us: replays timed (the cursor walks through as many synthetic batches), and the paths:
#: the default step and the ten-kernel one (gpunn's GEMM and the classifier, issue 18)
REPLAYS = 200
REPLAY_PATHS = {"default": {}, "own_gemm": {"gemm": "numba", "versions": {"softmax_cross_entropy": "classifier"}}}


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


def measure_replay(backend):
    """Per path (:data:`REPLAY_PATHS`), µs per replay of the default network's whole step (``next_batch``
    to the update) captured as one CUDA graph: ``host_us``, the host's time to issue REPLAYS replays
    (nothing waits: a replay is queued, and the GPU is slower than the host at them), and
    ``device_us``, the same replays' wall time up to the device's synchronisation.  ``host_share`` is
    the first over the second: how much a whole epoch as one graph (a WHILE node) could save."""
    import numpy as np

    from gpunn.backend import get_backend
    from gpunn.profile import step_kernels, synthetic_trainer
    from gpunn.train import TrainConfig

    result, cfg = {"replays": REPLAYS}, TrainConfig()
    probe = get_backend(backend, quiet=True)
    if probe.name != "cuda" or getattr(probe, "simulated", False):
        where = "CUDA simulator" if probe.name == "cuda" else f"{probe.name} backend"
        result["error"] = f"the {where} has no CUDA graphs"
        say(f"  not measured: {result['error']}")
        return result
    for path, options in REPLAY_PATHS.items():
        try:
            be = get_backend(backend, quiet=True, **options)
            trainer = synthetic_trainer(cfg, be, batches=REPLAYS + 1)
            n, cursor = cfg.batch_size, trainer.loop.cursor

            def rewind():
                be.upload(np.zeros(2, np.int32), cursor)
                be.synchronize()

            step = lambda: trainer.device_step(n)  # noqa: E731
            step()  # compiled, allocated
            graph = be.capture(step)
            rewind()
            graph()  # the first replay (uploads the graph)
            rewind()
            t0 = time.perf_counter()
            for _ in range(REPLAYS):
                graph()
            host = time.perf_counter() - t0
            be.synchronize()
            wall = time.perf_counter() - t0
            kernels, _ = step_kernels(cfg, be)
            result[path] = {"host_us": host / REPLAYS * 1e6, "device_us": wall / REPLAYS * 1e6,
                            "host_share": host / wall, "kernels_per_step": None if kernels is None else len(kernels)}
            say(f"  {path:<9} host {result[path]['host_us']:7.2f} µs, device {result[path]['device_us']:7.2f} µs "
                f"per replay ({100 * host / wall:.0f}% host), {result[path]['kernels_per_step']} kernels")
        except Exception as exc:
            result[path] = {"error": error_text(exc)}
            say(f"  {path:<9} not measured: {error_text(exc)}")
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
