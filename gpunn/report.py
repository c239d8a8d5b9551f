"""Reports: a profiled step's rows, and how they are written out.

:func:`summarize` turns a step's recorded op calls into one row per op (median time,
FLOPs, bytes, roofline); :func:`format_profile`, :func:`profile_csv` and
:func:`chrome_trace` write those rows as ``gpunn profile``'s text table, CSV and Chrome
trace.  :func:`text_table` and :func:`si` are the table and unit formatting every
command's text output uses.  A ``prof`` argument is a :class:`gpunn.profile.StepProfile`.
"""
from __future__ import annotations

import csv
import io
import statistics
from collections import Counter

import numpy as np

from gpunn.backend.ops import Cost
from gpunn.roofline import bound, percent_of_bound, percent_of_peak, roofline_seconds


def format_shape(shape) -> str:
    return "x".join(map(str, shape))
# ---------------------------------------------------------------------------- rows of a step


def summarize(steps, peaks, meaningful=True, sort="step") -> list[dict]:
    """One row per distinct (op, variant, shapes) of a step, with its median time per step."""
    first = steps[0]
    for i, s in enumerate(steps[1:], 2):
        if [c.key for c in s] != [c.key for c in first]:
            raise RuntimeError(f"step {i} ran different ops from step 1")
    groups = {}
    for c in first:
        g = groups.setdefault(c.key, {"op": c.op, "variant": c.variant, "shapes": [list(s) for s in c.shapes],
                                      "calls": 0, "launches": 0, "kernels": Counter(), "cost": Cost(0, 0)})
        g["calls"] += 1
        g["launches"] += len(c.launches)
        g["kernels"].update(k for k, _, _ in c.launches)
        g["cost"] += c.cost
    per_step = {key: [] for key in groups}
    host_bound = Counter()
    for s in steps:
        sums = Counter()
        for c in s:
            if meaningful:
                sums[c.key] += c.sample.seconds
            host_bound[c.key] += bool(c.sample and c.sample.host_bound)
        for key in groups:
            per_step[key].append(sums[key])
    rows = []
    for key, g in groups.items():
        cost = g.pop("cost")
        seconds = statistics.median(per_step[key]) if meaningful else None
        row = {**g, "kernels": dict(g["kernels"]), "seconds": seconds, "flops": cost.flops, "bytes": cost.bytes,
               "intensity": cost.intensity if cost.bytes else None,
               "gflops": cost.flops / seconds / 1e9 if seconds else None,
               "gbs": cost.bytes / seconds / 1e9 if seconds else None,
               "bound": bound(cost, peaks) if peaks else None,
               "roofline_seconds": roofline_seconds(cost, peaks) if peaks else None,
               "percent_of_peak": percent_of_peak(cost, seconds, peaks) if peaks and seconds else None,
               "host_bound_samples": host_bound[key]}
        rows.append(row)
    total = sum(r["seconds"] for r in rows) if meaningful else 0
    for r in rows:
        r["share"] = 100 * r["seconds"] / total if total else None
    if sort == "time" and meaningful:
        rows.sort(key=lambda r: -r["seconds"])
    return rows


def total_row(rows, peaks) -> dict:
    seconds = sum(r["seconds"] for r in rows) if rows and rows[0]["seconds"] is not None else None
    flops, nbytes = sum(r["flops"] for r in rows), sum(r["bytes"] for r in rows)
    roof = sum(r["roofline_seconds"] for r in rows) if peaks else None
    return {"op": "total", "calls": sum(r["calls"] for r in rows), "launches": sum(r["launches"] for r in rows),
            "seconds": seconds, "flops": flops, "bytes": nbytes,
            "gflops": flops / seconds / 1e9 if seconds else None, "gbs": nbytes / seconds / 1e9 if seconds else None,
            "percent_of_peak": percent_of_bound(roof, seconds) if roof and seconds else None,
            "share": sum(r["share"] for r in rows) if seconds else None}


def jsonable(v):
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------- text, CSV, Chrome trace


def _fmt(v, spec, missing="-"):
    return missing if v is None else format(v, spec)


def text_table(headers, rows, right=(), rule=True) -> str:
    """Rows of strings as aligned columns; columns named in ``right`` are right-aligned; a line
    of dashes under the headers unless ``rule`` is false."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, headers)).rstrip()

    return "\n".join([fmt(headers), *([fmt(["-" * w for w in widths])] if rule else []), *map(fmt, rows)])


PROFILE_COLUMNS = ("#", "op", "variant", "shapes", "calls", "kernels", "time µs", "FLOPs", "bytes", "GFLOP/s",
                   "GB/s", "FLOP/B", "bound", "% peak", "% step")


def si(n) -> str:
    """``2269184`` -> ``"2.27M"``: three significant digits and a k/M/G/T suffix."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g}{suffix}"
    return f"{n:.3g}"


def _profile_cells(i, r):
    return [str(i), r["op"], r.get("variant", ""), " ".join(format_shape(s) for s in r.get("shapes", [])),
            str(r["calls"]), str(r["launches"]) if r["launches"] else "-",
            _fmt(r["seconds"] and r["seconds"] * 1e6, ".1f"), si(r["flops"]), si(r["bytes"]),
            _fmt(r["gflops"], ".2f"), _fmt(r["gbs"], ".2f"), _fmt(r.get("intensity"), ".2f"), r.get("bound") or "-",
            _fmt(r["percent_of_peak"], ".1f"), _fmt(r["share"], ".1f")]


def format_profile(prof, sort="step") -> str:
    rows = prof.rows(sort)
    lines = [f"gpunn profile: one training step of {prof.model}, batch {prof.batch}, on {prof.device}"]
    if getattr(prof, "step_kernels", None) is not None:
        lines.append(f"kernels per step on the cuda path: {len(prof.step_kernels)}, the batch's gather (which "
                     f"moves the cursor on) included ({prof.step_kernels_how})")
    elif getattr(prof, "step_kernels_how", ""):
        lines.append(f"kernels per step: {prof.step_kernels_how}")
    if not prof.meaningful:
        lines.append("times are not meaningful in the CUDA simulator (kernels run as Python threads on the CPU): "
                     "this is the launch trace of one step, with each op's cost")
        lines += ["", _launch_table(prof.steps[0]), "", _kernel_counts(prof.steps[0]), ""]
        cells = [[str(i), r["op"], r["variant"], " ".join(format_shape(s) for s in r["shapes"]), str(r["calls"]),
                  str(r["launches"]), si(r["flops"]), si(r["bytes"])] for i, r in enumerate(rows, 1)]
        lines.append(text_table(("#", "op", "variant", "shapes", "calls", "kernels", "FLOPs", "bytes"), cells,
                                right=("#", "calls", "kernels", "FLOPs", "bytes")))
        return "\n".join(lines)
    p = prof.peaks
    lines.append(f"timing: {prof.timing}; median of {prof.reps} steps after {prof.warmup} warm-up steps")
    if p:
        lines.append(f"peaks: {p.gflops:,.1f} GFLOP/s, {p.gbs:,.1f} GB/s (ridge {p.ridge:.2f} FLOP/B) - {p.source}")
    cells = [_profile_cells(i, r) for i, r in enumerate(rows, 1)]
    total = total_row(rows, p)
    cells.append(_profile_cells("", {**total, "variant": "", "shapes": [], "intensity": None, "bound": None}))
    lines.append(text_table(PROFILE_COLUMNS, cells, right=PROFILE_COLUMNS[4:12] + PROFILE_COLUMNS[13:]))
    if prof.step_seconds:
        wall = statistics.median(prof.step_seconds)
        lines.append(f"step wall time without the profiler: {wall * 1e3:.3f} ms (median of {len(prof.step_seconds)}); "
                     f"the ops' {total['seconds'] * 1e3:.3f} ms are {100 * total['seconds'] / wall:.0f}% of it")
        if prof.graph_step_seconds is not None:
            g = prof.graph_step_seconds
            lines.append(f"step as one CUDA graph: {g * 1e3:.3f} ms ({prof.reps} replays back to back; "
                         f"{wall / g:.1f}x the eager step)")
    over = [r["op"] for r in rows if r["bound"] == "compute" and (r["percent_of_peak"] or 0) > 110]
    if over:
        lines.append(f"{', '.join(sorted(set(over)))} ran above the compute peak: the peaks are too low "
                     "(a CPU calibration taken under load?); measure them again with --recalibrate")
    flagged = sum(r["host_bound_samples"] for r in rows)
    if flagged:
        lines.append(f"{flagged} op samples may include host launch overhead (the GPU waited for the host)")
    return "\n".join(lines)


def _launch_table(calls) -> str:
    cells = []
    for i, c in enumerate(calls, 1):
        for k, grid, block in c.launches:
            if grid is None:  # a library call (cuBLAS): its launch configuration is its own
                cells.append([str(i), c.op, k, "-", "-", "-"])
                continue
            threads = int(np.prod(grid)) * int(np.prod(block))
            cells.append([str(i), c.op, k, str(jsonable(grid)), str(jsonable(block)), f"{threads:,}"])
        if not c.launches:
            cells.append([str(i), c.op, "(launches of its own: a version of yours?)", "-", "-", "-"])
    return text_table(("op #", "op", "kernel", "grid", "block", "threads"), cells, right=("op #", "threads"))


def _kernel_counts(calls) -> str:
    counts = Counter(k for c in calls for k, _, _ in c.launches)
    return "launches per step: " + ", ".join(f"{k} {n}" for k, n in counts.items()) + f" ({sum(counts.values())} in all)"


CSV_COLUMNS = ("op", "variant", "shapes", "calls", "launches", "seconds", "flops", "bytes", "intensity", "gflops",
               "gbs", "bound", "percent_of_peak", "share")


def profile_csv(prof, sort="step") -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for r in prof.rows(sort):
        w.writerow(["" if r[c] is None else (" ".join(map(format_shape, r[c])) if c == "shapes" else r[c])
                    for c in CSV_COLUMNS])
    return out.getvalue()


def chrome_trace(prof) -> dict:
    """The timed steps as Chrome trace events (Perfetto, chrome://tracing): one track of steps,
    one of ops; times in microseconds."""
    pid = 1
    events = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
         "args": {"name": f"gpunn {prof.backend}: {prof.device}" + ("" if prof.meaningful else " (times not meaningful)")}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": "train step"}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": 2, "args": {"name": "ops"}},
    ]
    for n, calls in enumerate(prof.steps, 1):
        t0 = min(c.sample.start for c in calls)
        t1 = max(c.sample.start + c.sample.seconds for c in calls)
        events.append({"name": f"step {n}", "cat": "step", "ph": "X", "pid": pid, "tid": 1,
                       "ts": t0 * 1e6, "dur": (t1 - t0) * 1e6, "args": {"ops": len(calls)}})
        for c in calls:
            events.append({"name": c.op, "cat": "op", "ph": "X", "pid": pid, "tid": 2,
                           "ts": c.sample.start * 1e6, "dur": c.sample.seconds * 1e6,
                           "args": {"variant": c.variant, "shapes": [format_shape(s) for s in c.shapes],
                                    "flops": c.cost.flops, "bytes": c.cost.bytes,
                                    "kernels": [f"{k} grid={jsonable(g)} block={jsonable(b)}"
                                                for k, g, b in c.launches]}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"model": prof.model, "batch": prof.batch, "timing": prof.timing,
                          "times_meaningful": prof.meaningful}}
