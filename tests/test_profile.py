"""gpunn profile and gpunn kernels: costs, the recorder, the table's arithmetic, and the commands' outputs."""
import csv
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import gpu_unavailable_reason
from gpunn.backend import NumpyBackend, ops
from gpunn.env import simulator_on
from gpunn.instrument import OpRecorder, annotate_nvtx, call_cost
from gpunn.profile import profile_step, synthetic_trainer
from gpunn.roofline import GPU_PEAKS, Peaks, cpu_peaks, lookup_gpu, peaks_from_properties, percent_of_peak
from gpunn.train import TrainConfig

SMALL = TrainConfig(hidden=(8,), batch_size=16)
#: Peaks given on the command line, so no test calibrates the CPU.
PEAK_ARGS = ["--peak-gflops", "100", "--peak-gbs", "10"]


def gpunn(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "gpunn", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


# ---------------------------------------------------------------------------- costs


def test_cost_formulas_match_hand_counts():
    # gemm 2x3 = (2x4)(4x3): 6 outputs, each 4 multiplies + 4 adds = 48; reads 8 + 12, writes 6 floats
    assert ops.gemm_cost(2, 3, 4) == (48, 4 * (8 + 12 + 6))
    # accumulate: 6 more adds, and out is read as well as written
    assert ops.gemm_cost(2, 3, 4, accumulate=True) == (54, 4 * (8 + 12 + 6 + 6))
    # relu(x + b) on 2x3: an add and a max per element; reads x (6) and b (3), writes 6
    assert ops.bias_act_cost(2, 3, "relu") == (12, 4 * 15)
    # softmax on 2x3: max, subtract, exp, sum, divide = 5 per element; reads 6, writes 6
    assert ops.softmax_cost(2, 3) == (30, 48)
    # bias_grad on 2x3: 6 adds; reads 6, writes 3
    assert ops.bias_grad_cost(2, 3) == (6, 36)
    # fused xent on 2x3: softmax 5/elt, subtract one-hot and scale 2/elt, and 3 per row (log, add, mean);
    # reads logits (6 floats) and labels (2 ints), writes grad (6) and the loss (1)
    assert ops.softmax_cross_entropy_cost(2, 3) == (7 * 6 + 3 * 2, 4 * (6 + 6 + 1) + 4 * 2)
    # Nesterov SGD on 5 params: p -= lr*step (2), v = m*v + g (2), step = g + m*v (2); reads p, g, v, writes p, v
    assert ops.sgd_update_cost(5, 0.9, 0.0, True) == (6 * 5, 4 * 5 * 5)
    # plain SGD: p -= lr*g only; reads p and g, writes p
    assert ops.sgd_update_cost(5, 0.0, 0.0, False) == (2 * 5, 4 * 3 * 5)


def test_every_op_records_cost_formulas_name_only_the_ops_arguments():
    """``cost``/``variant`` take a call's arguments by name (the record's): a formula naming a
    parameter the op lacks would fail only when profiled.  (That the backends' methods take the
    record's arguments is tests/backend/test_reference.py's.)"""
    for name, op in ops.OPS.items():
        for fn in (op.cost, op.variant):
            named = {p for p, v in inspect.signature(fn).parameters.items() if v.kind is not v.VAR_KEYWORD}
            assert named <= set(op.args), (name, fn, sorted(named - set(op.args)))


def test_gemm_call_cost_reads_m_n_k_through_the_transposes():
    f = np.float32
    a, b, out = np.zeros((2, 4), f), np.zeros((4, 3), f), np.zeros((2, 3), f)
    expected = ops.gemm_cost(2, 3, 4)
    assert call_cost("gemm", a, b, out)[0] == expected
    assert call_cost("gemm", a.T.copy(), b, out, trans_a=True)[0] == expected
    assert call_cost("gemm", a, b.T.copy(), out, trans_b=True)[0] == expected
    assert call_cost("gemm", a, b, out, accumulate=True)[0] == ops.gemm_cost(2, 3, 4, True)


def test_roofline_percent_uses_the_bound_that_applies():
    peaks = Peaks(gflops=100.0, gbs=10.0, device="test", source="test")  # ridge at 10 FLOP/byte
    # memory-bound: 1e6 FLOP over 1e6 bytes needs 1e6/10e9 = 100 us; taking 200 us is 50%
    assert percent_of_peak(ops.Cost(10**6, 10**6), 200e-6, peaks) == pytest.approx(50.0)
    # compute-bound: 1e9 FLOP over 1e6 bytes needs 1e9/100e9 = 10 ms; taking 40 ms is 25%
    assert percent_of_peak(ops.Cost(10**9, 10**6), 40e-3, peaks) == pytest.approx(25.0)


# ---------------------------------------------------------------------------- peaks


@pytest.mark.parametrize("name,label", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA GH200 480GB", "GH200"), ("NVIDIA A100-SXM4-40GB", "A100 40GB SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"), ("NVIDIA A100-PCIE-40GB", "A100 40GB PCIe"),
    ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"), ("Tesla V100-SXM2-16GB", "V100 SXM2"), ("Tesla T4", "T4"),
    ("NVIDIA A10", "A10"), ("NVIDIA A10G", "A10G"),
])
def test_gpu_names_find_their_own_row(name, label):
    assert lookup_gpu(name)[0] == label


def test_device_properties_agree_with_the_data_sheet():
    # A100 40GB SXM: 108 SMs at 1410 MHz, 64 FP32 lanes each; HBM2 at 1215 MHz (double data rate), 5120 bits
    props = {"major": 8, "minor": 0, "multiProcessorCount": 108, "clockRate": 1_410_000,
             "memoryClockRate": 1_215_000, "memoryBusWidth": 5120}
    gflops, gbs = peaks_from_properties(props)
    _, tflops, sheet_gbs = next(row[1:] for row in GPU_PEAKS if row[1] == "A100 40GB SXM")
    assert gflops == pytest.approx(tflops * 1e3, rel=0.01) and gbs == pytest.approx(sheet_gbs, rel=0.01)


def test_cpu_peaks_are_measured_once_then_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("gpunn.roofline.calibrate_cpu", lambda: calls.append(1) or (50.0, 5.0))
    first = cpu_peaks(cache=tmp_path)
    again = cpu_peaks(cache=tmp_path)
    assert (first.gflops, first.gbs) == (again.gflops, again.gbs) == (50.0, 5.0) and len(calls) == 1
    assert json.loads((tmp_path / "peaks.json").read_text())  # a JSON table keyed by CPU
    cpu_peaks(cache=tmp_path, recalibrate=True)
    assert len(calls) == 2


@pytest.mark.parametrize("content, why", [
    ('{KEY: {"gflops": "abc", "gbs": 5.0, "measured": "2026-12-01"}}', "is not two positive rates"),
    ('{KEY: {"gflops": 50.0, "gbs": 5.0}}', "is not two positive rates and a date"),
    ('{KEY: {"gflops": true, "gbs": 5.0, "measured": "x"}}', "is not two positive rates"),
    ('{KEY: {"gflops": -1, "gbs": 5.0, "measured": "x"}}', "is not two positive rates"),
    ('{KEY: {"gflops": 1e999, "gbs": 5.0, "measured": "x"}}', "is not two positive rates"),
    ("{KEY: [1, 2]}", "is not two positive rates"),
    ("[" * 100_000, "not valid JSON"),
    ('"just a string"', "not a JSON object"),
    ("\xff\xfe", "not valid JSON"),
])
def test_a_corrupt_peaks_file_is_ignored_and_measured_again(tmp_path, monkeypatch, capsys, content, why):
    from gpunn.roofline import cpu_key

    monkeypatch.setattr("gpunn.roofline.calibrate_cpu", lambda: (50.0, 5.0))
    (tmp_path / "peaks.json").write_text(content.replace("KEY", json.dumps(cpu_key())), errors="surrogateescape")
    peaks = cpu_peaks(cache=tmp_path)
    assert (peaks.gflops, peaks.gbs) == (50.0, 5.0)
    [line] = capsys.readouterr().err.splitlines()
    assert "peaks.json" in line and why in line and "measuring the CPU's peaks again" in line
    assert cpu_peaks(cache=tmp_path).gflops == 50.0 and capsys.readouterr().err == ""  # rewritten whole


def test_a_fifo_as_the_peaks_file_is_ignored_not_read(tmp_path, monkeypatch, capsys):
    from conftest import within

    monkeypatch.setattr("gpunn.roofline.calibrate_cpu", lambda: (50.0, 5.0))
    os.mkfifo(tmp_path / "peaks.json")
    assert within(10, lambda: cpu_peaks(cache=tmp_path)).gflops == 50.0
    assert "a FIFO, not a regular file" in capsys.readouterr().err
    assert (tmp_path / "peaks.json").is_file()  # replaced by a regular file


# ---------------------------------------------------------------------------- the recorder


def test_recorder_wraps_the_instance_only_and_restores_it():
    be, other = NumpyBackend(), NumpyBackend()
    original = be.unchecked
    with OpRecorder(be) as rec:
        assert be.unchecked is not original and other.unchecked.impl is other
        a = np.ones((2, 3), np.float32)
        out = np.empty((2, 2), np.float32)
        be.gemm(a, a, out, trans_b=True)
        other.gemm(a, a, out, trans_b=True)
    assert be.unchecked is original and not any(name in vars(be) or "_" + name in vars(be) for name in ops.OPS)
    (call,) = rec.take()  # only the wrapped instance's call
    assert (call.op, call.variant, call.shapes, call.cost) == ("gemm", "NT", ((2, 3), (2, 3), (2, 2)),
                                                               ops.gemm_cost(2, 2, 3))


def test_profiling_does_not_change_the_training_step():
    plain, profiled = synthetic_trainer(SMALL, NumpyBackend()), synthetic_trainer(SMALL, NumpyBackend())
    plain.train_step(plain.train_x, plain.train_y, SMALL.lr)
    with OpRecorder(profiled.backend):
        profiled.train_step(profiled.train_x, profiled.train_y, SMALL.lr)
    for p, q in zip(plain.model.params, profiled.model.params):
        np.testing.assert_array_equal(p, q)


def test_step_profile_counts_calls_and_shares_add_up():
    prof = profile_step(SMALL, NumpyBackend(), reps=3, warmup=1,
                        peaks=Peaks(100.0, 10.0, "test", "test"))
    rows = prof.rows()
    calls = {op: sum(r["calls"] for r in rows if r["op"] == op) for op in {r["op"] for r in rows}}
    layers = len(SMALL.hidden) + 1
    # forward: one linear (GEMM, bias, activation) per layer; backward: one linear_backward (dW, and dX through
    # the layer below's activation, with its bias gradient) per layer but the first, whose dW is a GEMM
    assert calls["linear"] == layers and calls["linear_backward"] == layers - 1 and calls["gemm"] == 1
    # the optimizer updates every parameter (one op per array, or one over a flat copy of all of them)
    updated = sum(int(np.prod(r["shapes"][0])) * r["calls"] for r in rows if r["op"] == "sgd_update")
    assert updated >= sum(int(np.prod(p.shape)) for p in synthetic_trainer(SMALL, NumpyBackend()).model.params)
    # the loss counts the correct rows and sums the last layer's bias gradient (its row sum) itself
    assert calls["softmax_cross_entropy"] == 1 and "count_correct" not in calls
    assert [r["variant"] for r in rows if r["op"] == "softmax_cross_entropy"] == ["+ count + bias grad"]
    assert "bias_grad" not in calls and "act_bias_backward" not in calls  # in linear_backward
    assert sum(r["share"] for r in rows) == pytest.approx(100.0)
    assert all(r["seconds"] > 0 and r["percent_of_peak"] > 0 for r in rows)
    assert len(prof.steps) == 3 and len(prof.step_seconds) == 3
    assert sum(r["flops"] for r in rows) == sum(c.cost.flops for c in prof.steps[0])


def test_nvtx_ranges_cost_nothing_on_the_cpu():
    trainer = synthetic_trainer(SMALL, NumpyBackend())
    remove = annotate_nvtx(trainer.model, trainer.optimizer)
    assert not any("forward" in vars(layer) for layer in trainer.model.layers)
    assert "step" not in vars(trainer.optimizer)
    remove()


def test_nvtx_ranges_wrap_and_unwrap_on_a_gpu_backend(monkeypatch):
    pytest.importorskip("nvtx")
    trainer = synthetic_trainer(SMALL, NumpyBackend())
    monkeypatch.setattr(trainer.backend, "name", "cuda")  # as the cuda backend would be on a GPU
    remove = annotate_nvtx(trainer.model, trainer.optimizer)
    assert all("forward" in vars(layer) and "backward" in vars(layer) for layer in trainer.model.layers)
    ranged = trainer.model.layers[0].forward
    annotate_nvtx(trainer.model, trainer.optimizer)()  # a second annotation wraps nothing, removes nothing
    assert trainer.model.layers[0].forward is ranged
    trainer.train_step(trainer.train_x, trainer.train_y, SMALL.lr)  # still trains through the ranges
    remove()
    assert not any("forward" in vars(layer) for layer in trainer.model.layers)
    assert "step" not in vars(trainer.optimizer)


# ---------------------------------------------------------------------------- the commands


def test_profile_command_writes_table_json_csv_and_trace(tmp_path):
    j, c, t = tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "p.trace.json"
    r = gpunn("profile", "--backend", "numpy", "--hidden", "8", "--batch-size", "16", "--reps", "3",
              "--warmup", "1", *PEAK_ARGS, "--json", j, "--csv", c, "--trace", t)
    assert r.returncode == 0, r.stderr
    assert "% step" in r.stdout and "gemm" in r.stdout and "step wall time" in r.stdout

    d = json.loads(j.read_text())
    assert d["backend"] == "numpy" and d["timing"]["meaningful"] and d["peaks"]["gflops"] == 100
    assert sum(op["share"] for op in d["ops"]) == pytest.approx(100.0)
    assert d["total"]["seconds"] == pytest.approx(sum(op["seconds"] for op in d["ops"]))

    rows = list(csv.DictReader(c.open()))
    assert [row["op"] for row in rows] == [op["op"] for op in d["ops"]]

    trace = json.loads(t.read_text())
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    steps = [e for e in complete if e["cat"] == "step"]
    assert len(steps) == d["timing"]["reps"]
    assert len(complete) - len(steps) == d["timing"]["reps"] * d["total"]["calls"]
    assert all(e["dur"] >= 0 and isinstance(e["ts"], (int, float)) and {"pid", "tid", "name"} <= set(e)
               for e in complete)


def test_profile_command_rejects_bad_options():
    r = gpunn("profile", "--backend", "numpy", "--reps", "0")
    assert r.returncode == 2 and "positive integer" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.cudasim
def test_profile_in_the_simulator_shows_the_launch_trace_not_times(tmp_path):
    pytest.importorskip("numba")
    from gpunn.kernels import launch  # noqa: F401  (the kernels import: numba-cuda is here)
    from gpunn.ptx import kernel_specs

    j = tmp_path / "sim.json"
    r = gpunn("profile", "--backend", "cuda", "--hidden", "4", "--batch-size", "4", "--json", j,
              env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert r.returncode == 0, r.stderr
    assert "not meaningful" in r.stdout and "time µs" not in r.stdout
    d = json.loads(j.read_text())
    assert d["timing"]["meaningful"] is False and all(op["seconds"] is None for op in d["ops"])
    from gpunn.backend.cuda_backend import CUBLAS_GEMM

    names = {spec.name for _, spec in kernel_specs()} | {CUBLAS_GEMM}
    assert d["launches"] and {entry["kernel"] for entry in d["launches"]} <= names
    for entry in d["launches"]:
        assert entry["kernel"] in r.stdout
    # the whole step's kernels: the profiled train_step's, after the batch's gather (which moves the cursor on)
    step = [k["kernel"] for k in d["step_kernels"]]
    assert d["kernels_per_step"] == len(step) == len(d["launches"]) + 1
    assert step[0] == "next_batch" and step[-1] == "sgd_update"
    assert step[1:] == [entry["kernel"] for entry in d["launches"]]


@pytest.mark.cudasim
@pytest.mark.skipif(not simulator_on(), reason="the CUDA simulator is off in this run")
def test_kernels_per_step_is_the_cuda_paths_on_every_backend():
    """The numpy backend counts what the cuda path would launch (its plans run dry): the same
    kernels, in the same order, as one step records in the simulator, for each loss and version."""
    from gpunn.backend.cuda_backend import CudaBackend
    from gpunn.profile import step_kernels

    counts = {}
    for loss, versions in (("cross-entropy", {}), ("cross-entropy", {"softmax_cross_entropy": "classifier"}),
                           ("mse", {})):
        cfg = TrainConfig(hidden=(16, 16), batch_size=8, loss=loss, activation="sigmoid")
        planned, how = step_kernels(cfg, CudaBackend(dry=True, versions=versions))
        recorded, how_sim = step_kernels(cfg, CudaBackend(versions=versions))
        assert planned == recorded and "simulator" in how_sim
        counts[loss, bool(versions)] = len(recorded)
    on_numpy, how = step_kernels(TrainConfig(hidden=(16, 16), batch_size=8), NumpyBackend())
    assert "run dry" in how and len(on_numpy) == counts["cross-entropy", False]
    # the gather (with the cursor's advance), 3 x (GEMM, bias_act), the loss (count, softmax-xent, its
    # reduction, the output bias's gradient), 5 GEMMs and 2 act_bias_backward, the update
    assert counts["cross-entropy", False] == 1 + 6 + 4 + 5 + 2 + 1 == 19
    assert counts["cross-entropy", True] == 17  # the classifier: loss, count, both gradients in 2 launches
    # gpunn's GEMM with the classifier: gather, 3 linear, 2 for the loss, 2 gemm_backward and the first
    # layer's dW, the update: the default network's shape of step in 10 kernels
    fused, _ = step_kernels(TrainConfig(hidden=(16, 16), batch_size=8),
                            CudaBackend(dry=True, gemm="numba", versions={"softmax_cross_entropy": "classifier"}))
    assert [k for _, k in fused] == ["next_batch", *["gemm_bias_act"] * 3, "classifier", "finish_loss_colsum",
                                     "gemm_backward", "gemm_backward", "gemm", "sgd_update"]
    primer = TrainConfig(hidden=(16, 16), batch_size=8, loss="mse", activation="sigmoid", momentum=0.0,
                         nesterov=False)
    for be in (NumpyBackend(), CudaBackend()):  # the whole step as narrow_step: its two kernels
        kernels, _ = step_kernels(primer, be, fused_step=True)
        assert kernels == [("narrow_step", "narrow_rows"), ("narrow_step", "narrow_update")]


@pytest.fixture(scope="module")
def kernels_report(tmp_path_factory):
    """One run of ``gpunn kernels`` (it compiles every kernel) shared by the tests below."""
    pytest.importorskip("numba")
    path = tmp_path_factory.mktemp("kernels") / "kernels.json"
    r = gpunn("kernels", "--arch", "sm_90,sm_80", "--json", path)   # no ptxas: fails, saying so
    return r, json.loads(path.read_text()) if path.exists() else None


@pytest.mark.ptx
def test_kernels_command_reports_every_kernel(kernels_report):
    from gpunn.ptx import kernel_specs

    r, d = kernels_report
    assert r.returncode == 0, r.stderr
    names = [spec.name for _, spec in kernel_specs()]
    for arch in ("sm_90", "sm_80"):
        assert sorted(row["kernel"] for row in d["kernels"] if row["arch"] == arch) == sorted(names)
    for name in names:
        assert name in r.stdout


@pytest.mark.ptx
def test_kernels_occupancy_follows_from_the_reported_resources(kernels_report):
    from gpunn.occupancy import occupancy

    _, d = kernels_report
    for row in d["kernels"]:
        assert row["registers"] > 0 and row["spill_store_bytes"] >= 0 and row["f64_instructions"] == 0
        occ = occupancy(row["arch"], row["block"], row["registers"], row["shared_bytes"])
        assert 0 < row["occupancy_percent"] == occ.percent <= 100
        assert row["limited_by"] == list(occ.limited_by)
    assert set(d["archs"]) == {"sm_90", "sm_80"}


def test_gpu_timer_reads_events_after_the_step_and_lengthens_a_short_hold(monkeypatch):
    """The CUDA-event timer's bookkeeping, on a stand-in for CuPy whose clock moves only when told."""
    import types

    from gpunn.instrument import CudaEvents

    clock, holds, gpu_caught_up = [0.0], [], [False]

    class Event:
        def record(self, stream=None):
            self.t = clock[0]

        done = property(lambda self: gpu_caught_up[0])

        def synchronize(self):
            pass

    cuda = types.SimpleNamespace(Event=Event, get_current_stream=lambda: "stream",
                                 get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)  # milliseconds
    fake = types.SimpleNamespace(cuda=cuda, RawKernel=lambda src, name: lambda grid, block, args: holds.append(int(args[0])))
    monkeypatch.setitem(sys.modules, "cupy", fake)

    timer = CudaEvents(hold_us=100)
    clock[0] = 1.0
    first = timer.measure(lambda: clock.__setitem__(0, clock[0] + 0.002))
    gpu_caught_up[0] = True  # the GPU finished the hold before the next op was queued
    second = timer.measure(lambda: clock.__setitem__(0, clock[0] + 0.003))
    assert first.seconds is None  # nothing is read before the step is synchronised
    timer.resolve()
    assert first.seconds == pytest.approx(0.002) and second.seconds == pytest.approx(0.003)
    assert first.start == pytest.approx(1.0) and second.start == pytest.approx(1.002)
    assert not first.host_bound and second.host_bound
    assert holds == [100_000, 100_000] and timer.hold_ns == 200_000  # the next op gets a longer hold


@pytest.mark.gpu
@pytest.mark.skipif(gpu_unavailable_reason() is not None, reason=str(gpu_unavailable_reason()))
@pytest.mark.parametrize("gemm", ["numba", "cublas"])
def test_the_graph_of_a_step_holds_the_kernels_counted(gemm):
    """On the device: the CUDA graph of one whole step holds as many kernel nodes as
    ``kernels_per_step`` counts (gpunn's GEMM: exactly; cuBLAS may split a GEMM in two)."""
    from gpunn.backend.cuda_backend import CudaBackend
    from gpunn.profile import step_kernels

    for versions in ({}, {"softmax_cross_entropy": "classifier"}):
        be = CudaBackend(gemm=gemm, versions=versions)
        cfg = TrainConfig(hidden=(64, 32), batch_size=32)
        counted, _ = step_kernels(cfg, be)
        trainer = synthetic_trainer(cfg, be)
        n = trainer.train_x.shape[0]
        trainer.loop.start_epoch(np.arange(n), np.full(trainer.steps_per_epoch + 1, cfg.lr), 0)
        step = lambda: trainer.loop.step(n, trainer.train_step)  # noqa: E731
        step()  # compiled, allocated
        nodes = be.capture(step).kernel_nodes()
        if gemm == "numba":
            assert nodes == len(counted), (versions, counted)
        else:
            assert nodes >= len(counted), (versions, counted)
