"""Shared benchmark helpers: timing (CPU, CUDA events), peak memory, result rows, tables, plots.

Every GPU benchmark module ``bench/gpu_<piece>.py`` returns a list of rows built by
:func:`make_row`::

    {"suite": str, "case": str, "impl": str, "ms": float | None, "peak_mib": float | None,
     "ratio_vs_ref": float | None, "note": str}

``case`` names the sizes as ``key=value`` pairs separated by commas ("2N=65536,D=128"); the first
integer value is the x axis of the plots unless the row carries a numeric ``"x"``.
``ratio_vs_ref`` is a speed-up: the reference's time divided by this row's time for the same
suite and case (> 1 means faster than the reference); :func:`add_ratios` fills it in.
Times are medians in milliseconds; memory is in MiB.
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

import torch

ROW_KEYS = ("suite", "case", "impl", "ms", "peak_mib", "ratio_vs_ref", "note")
MIB = 2.0**20


# ----------------------------------------------------------------------------- rows

def make_row(suite: str, case: str, impl: str, ms: float | None = None, peak_mib: float | None = None,
             ratio_vs_ref: float | None = None, note: str = "", **extra) -> dict:
    """One result row in the shared format (extra keys, e.g. ``x=65536``, are kept)."""
    row = dict(suite=suite, case=case, impl=impl, ms=_num(ms), peak_mib=_num(peak_mib),
               ratio_vs_ref=_num(ratio_vs_ref), note=str(note))
    row.update(extra)
    return row


def add_ratios(rows: list[dict], ref_impl: str = "reference") -> list[dict]:
    """Set ``ratio_vs_ref = ref_ms / ms`` for rows sharing suite and case with a ``ref_impl`` row."""
    ref = {(r["suite"], r["case"]): r["ms"] for r in rows if r["impl"] == ref_impl and r["ms"]}
    for r in rows:
        base = ref.get((r["suite"], r["case"]))
        if base and r["ms"]:
            r["ratio_vs_ref"] = base / r["ms"]
    return rows


def _num(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- timing

def cpu_time_ms(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 10,
                budget_s: float | None = None) -> float:
    """Median wall time of ``fn()`` in ms (CPU work; it must finish its work before returning).

    With ``budget_s`` the number of repeats is cut so that the timing takes about that long.
    """
    for _ in range(warmup):
        fn()
    repeats = _fit_repeats(fn, repeats, budget_s, clock=time.perf_counter)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cuda_time_ms(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 20,
                 budget_s: float | None = None) -> float:
    """Median time of ``fn()`` in ms between CUDA events recorded around each call.

    Calls are queued back to back (no synchronisation between repeats), so a launch-bound
    ``fn`` is charged for the gaps its host code leaves on the device, as in a training loop.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    repeats = _fit_repeats(fn, repeats, budget_s, clock=_cuda_clock)
    events = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def cuda_step_ms_and_peak(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, float]:
    """Median ms per call, each call timed on its own (synchronised), and peak MiB during the calls.

    For whole training steps, whose host-side work should be charged in full to every step.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20


def capture_cuda_graph(fn: Callable[[], object], warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, object]:
    """Runs ``fn`` ``warmup`` times on a side stream (cuDNN autotuning, Triton compiles, optimizer
    state), then records one call in a CUDA graph; returns the graph and what the recorded call
    returned (its outputs are overwritten by every ``graph.replay()``)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def time_ms(fn: Callable[[], object], device: str | torch.device, **kwargs) -> float:
    """:func:`cuda_time_ms` for a CUDA device, :func:`cpu_time_ms` otherwise."""
    return cuda_time_ms(fn, **kwargs) if torch.device(device).type == "cuda" else cpu_time_ms(fn, **kwargs)


def _cuda_clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def _fit_repeats(fn, repeats: int, budget_s: float | None, clock) -> int:
    if budget_s is None:
        return repeats
    t0 = clock()
    fn()
    once = max(clock() - t0, 1e-6)
    return max(3, min(repeats, int(budget_s / once)))


# ----------------------------------------------------------------------------- memory

def cuda_peak_mib(fn: Callable[[], object], device: str | torch.device | None = None) -> float:
    """Peak CUDA memory allocated by torch during one ``fn()`` call, in MiB.

    Absolute: it includes every tensor alive at the time (inputs the case holds, the model),
    like ``torch.cuda.max_memory_allocated``.
    """
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / MIB


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_peak_rss_mib(fn: Callable[[], object]) -> float | None:
    """Growth of this process's peak resident memory during one ``fn()`` call, in MiB (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``), so it sees torch's
    allocations (tracemalloc does not). Memory the allocator kept from earlier calls is reused
    without showing up, so this can under-count; :func:`peak_rss_subprocess_mib` measures in a
    fresh process. ``None`` where the kernel interface is missing.
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0) / 1024.0


_CHILD = r"""
import gc, importlib, json, sys
sys.path[:0] = {paths!r}
import _timing
module, name = {target!r}.split(":")
fn = getattr(importlib.import_module(module), name)(**json.loads({kwargs!r}))
print("__PEAK__" + json.dumps(_timing.cpu_peak_rss_mib(fn)))
"""


def peak_rss_subprocess_mib(target: str, timeout_s: float = 120.0, **kwargs) -> float | None:
    """Peak RSS growth of one call, measured in a fresh Python process, in MiB.

    ``target`` is ``"module:factory"``: ``factory(**kwargs)`` builds the inputs (not measured)
    and returns the zero-argument function whose peak is measured. The module is imported with
    the repository root and ``bench/`` on the path.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    code = _CHILD.format(paths=[here, os.path.dirname(here)], target=target, kwargs=json.dumps(kwargs))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    for line in out.stdout.splitlines():
        if line.startswith("__PEAK__"):
            return json.loads(line[len("__PEAK__"):])
    raise RuntimeError(f"memory probe {target} failed: {out.stderr.strip()[-500:]}")


# ----------------------------------------------------------------------------- one case

def measure(suite: str, case: str, impl: str, fn: Callable[[], object], *,
            device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 20,
            budget_s: float | None = 2.0, memory: bool = True, note: str = "", **extra) -> dict:
    """Time (and measure the peak memory of) one case; never raises.

    Out of CUDA memory gives a row with ``ms=None`` and note "OOM"; any other exception gives
    a row whose note names the error, so that one failing case never stops the others.
    """
    device = torch.device(device)
    try:
        ms = time_ms(fn, device, warmup=warmup, repeats=repeats, budget_s=budget_s)
        peak = None
        if memory:
            peak = cuda_peak_mib(fn, device) if device.type == "cuda" else cpu_peak_rss_mib(fn)
        return make_row(suite, case, impl, ms, peak, note=note, **extra)
    except torch.cuda.OutOfMemoryError:
        _release(device)
        return make_row(suite, case, impl, None, None, note="OOM", **extra)
    except Exception as exc:  # reported in the row instead
        _release(device)
        return make_row(suite, case, impl, None, None, note=error_note(exc), **extra)


def error_note(exc: BaseException) -> str:
    """A short, one-line description of an exception for a row's note."""
    text = " ".join(str(exc).split())
    return f"error: {type(exc).__name__}: {text}"[:300]


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- reporting

def environment() -> dict:
    """Card, library versions and date, for the header of every report."""
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               python=platform.python_version(), torch=torch.__version__, triton=None,
               device=f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def write_json(rows: list[dict], path: str, env: dict | None = None) -> str:
    """Write ``{"environment": ..., "rows": [...]}`` to ``path``; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"environment": env or environment(), "rows": rows}, f, indent=1)
    return path


class SavedRows(list):
    """A list of rows that ``save(rows)`` writes out at every append, so a module stopped by the
    report's time limit still leaves the rows it had (the report reads them back)."""

    def __init__(self, save):
        super().__init__()
        self._save = save

    def append(self, row: dict) -> None:
        super().append(row)
        self._save(list(self))

    def extend(self, rows) -> None:
        super().extend(rows)
        self._save(list(self))

    def __iadd__(self, rows):
        self.extend(rows)
        return self


def read_rows(path: str) -> list[dict]:
    """Rows from a file written by :func:`write_json` (or a bare list of rows)."""
    with open(path) as f:
        data = json.load(f)
    return data["rows"] if isinstance(data, dict) else data


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def markdown_tables(rows: list[dict]) -> str:
    """One compact markdown table per suite, in order of first appearance."""
    parts = []
    for suite in _unique(r["suite"] for r in rows):
        parts += [f"### {suite}", "", "| case | impl | ms | peak MiB | × vs ref | note |",
                  "|---|---|---:|---:|---:|---|"]
        for r in rows:
            if r["suite"] == suite:
                note = str(r.get("note", "")).replace("|", "/")
                parts.append(f"| {r['case']} | {r['impl']} | {_fmt(r['ms'])} | {_fmt(r['peak_mib'])} "
                             f"| {_fmt(r['ratio_vs_ref'])} | {note} |")
        parts.append("")
    return "\n".join(parts)


def print_table(rows: list[dict], file=None) -> None:
    """A plain-text table on stdout (for logs)."""
    file = file or sys.stdout
    for r in rows:
        print(f"{r['suite']:<14} {r['case']:<28} {r['impl']:<22} {_fmt(r['ms']):>9} ms "
              f"{_fmt(r['peak_mib']):>9} MiB  x{_fmt(r['ratio_vs_ref']):<6} {r.get('note', '')}", file=file)


def case_x(row: dict) -> float | None:
    """The plot abscissa of a row: its ``"x"``, else the first integer in its case string."""
    if isinstance(row.get("x"), (int, float)):
        return float(row["x"])
    m = re.search(r"=\s*(\d+)", str(row.get("case", "")))
    return float(m.group(1)) if m else None


def plot_suites(rows: list[dict], out_dir: str) -> list[str]:
    """PNG per suite with several sizes: time and peak memory against size, one line per impl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for suite in _unique(r["suite"] for r in rows):
        srows = [r for r in rows if r["suite"] == suite and case_x(r) is not None]
        if len({case_x(r) for r in srows}) < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in ((axes[0], "ms", "time (ms)"), (axes[1], "peak_mib", "peak memory (MiB)")):
            for impl in _unique(r["impl"] for r in srows):
                pts = sorted((case_x(r), r[key]) for r in srows if r["impl"] == impl and r[key])
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("size (first value of the case)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(suite)
        fig.tight_layout()
        path = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9_.-]+", "_", suite) + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
