"""One-shot GPU report: run every ``bench/gpu_<piece>.py`` and collect their rows.

    python bench/gpu_report.py OUT_DIR [--quick] [--isolate] [--module-timeout S] [--budget S]
                                       [--only NAME ...]

Writes OUT_DIR/results.json (environment + all rows), OUT_DIR/results.md (a table per suite,
with card, torch and triton versions and the date) and a PNG per suite that has several sizes.

By default each module is imported and its ``run(out_dir, quick)`` called in this process inside
try/except. With ``--isolate`` each module runs in its own Python process (``--only NAME``) with
a time limit, so that a crash or a poisoned CUDA context in one cannot spoil the others;
``--budget`` bounds the total (modules left when it runs out get a "skipped" row).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import _timing  # noqa: E402

# Known pieces first, in this order (the open targets first, then the quick augmentation report,
# then NT-Xent, whose own budget is 100 s); any other bench/gpu_*.py follows.
ORDER = ["gpu_lars", "gpu_encoder", "gpu_train", "gpu_augment", "gpu_ntxent"]
SKIP = {"gpu_report"}


def discover() -> list[str]:
    found = sorted(f[:-3] for f in os.listdir(HERE)
                   if f.startswith("gpu_") and f.endswith(".py") and f[:-3] not in SKIP)
    return [m for m in ORDER if m in found] + [m for m in found if m not in ORDER]


def run_module(name: str, out_dir: str, quick: bool) -> list[dict]:
    """Import bench/<name>.py and call its run(); failures become one error row."""
    t0 = time.perf_counter()
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        rows = [normalize(r) for r in module.run(out_dir, quick)]
        status = f"{len(rows)} rows"
    except Exception as exc:
        traceback.print_exc()
        rows = [_timing.make_row(name, "-", name, note=_timing.error_note(exc))]
        status = "FAILED"
    print(f"[gpu_report] {name}: {status} in {time.perf_counter() - t0:.1f} s", flush=True)
    return rows


def run_isolated(name: str, out_dir: str, quick: bool, timeout_s: float) -> list[dict]:
    """Run one module in a child process (this script with --only) under a time limit."""
    t0 = time.perf_counter()
    started = time.time()
    part = os.path.join(out_dir, f"_part_{name}.json")
    cmd = [sys.executable, os.path.abspath(__file__), out_dir, "--only", name, "--part", part]
    if quick:
        cmd.append("--quick")
    try:
        proc = subprocess.run(cmd, timeout=timeout_s)
        if os.path.isfile(part):
            rows = _timing.read_rows(part)
            os.remove(part)
        else:
            rows = [_timing.make_row(name, "-", name, note=f"error: exit status {proc.returncode}, no rows")]
    except subprocess.TimeoutExpired:
        rows = [_timing.make_row(name, "-", name, note=f"error: timed out after {timeout_s:.0f} s")]
        # modules that save their rows as they go (bench/<name>.py -> OUT_DIR/<piece>.json) keep them
        saved = os.path.join(out_dir, name.removeprefix("gpu_") + ".json")
        if os.path.isfile(saved) and os.path.getmtime(saved) >= started:
            try:
                rows = [normalize(r) for r in _timing.read_rows(saved)] + rows
            except (OSError, ValueError, KeyError):
                pass
    print(f"[gpu_report] {name} (isolated): {time.perf_counter() - t0:.1f} s", flush=True)
    return rows


def normalize(r: dict) -> dict:
    """A module's row in the shared format: missing keys filled in, numbers as floats."""
    extra = {k: v for k, v in r.items() if k not in _timing.ROW_KEYS}
    names = (str(r.get("suite", "?")), str(r.get("case", "?")), str(r.get("impl", "?")))
    return _timing.make_row(*names, r.get("ms"), r.get("peak_mib"), r.get("ratio_vs_ref"),
                            r.get("note") or "", **extra)


def write_report(rows: list[dict], out_dir: str, env: dict, command: str) -> None:
    _timing.write_json(rows, os.path.join(out_dir, "results.json"), env)
    try:
        plots = _timing.plot_suites(rows, out_dir)
    except Exception as exc:  # plots are a bonus; the tables must still be written
        print(f"[gpu_report] plots failed: {_timing.error_note(exc)}", flush=True)
        plots = []
    head = [
        "# skelcl GPU benchmark results", "",
        f"- device: {env.get('device')}", f"- torch {env.get('torch')}, triton {env.get('triton')}, "
        f"CUDA {env.get('cuda')}, Python {env.get('python')}",
        f"- date: {env.get('date')}", f"- command: `{command}`", "",
        ("Times are medians in ms (CUDA events); peak MiB is torch.cuda.max_memory_allocated during one call"
         if env.get("cuda") else "No CUDA device: CPU medians in ms; peak MiB is the growth of peak RSS")
        + "; × vs ref is the reference's time divided by this row's time.", "", "",
    ]
    plot_lines = [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(head) + _timing.markdown_tables(rows) + "\n" + "\n".join(plot_lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--quick", action="store_true", help="smallest sizes only")
    ap.add_argument("--isolate", action="store_true", help="one child process per module")
    ap.add_argument("--module-timeout", type=float, default=120.0, help="seconds per module with --isolate")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for all modules with --isolate; later modules are cut short or skipped")
    ap.add_argument("--only", nargs="*", default=None, help="module names (gpu_lars ...)")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # child mode: rows go here
    args = ap.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)

    names = discover() if not args.only else args.only
    if args.part:  # child of --isolate: run the module(s), write the rows, nothing else
        rows = [r for n in names for r in run_module(n, args.out_dir, args.quick)]
        with open(args.part, "w") as f:
            json.dump(rows, f)
        return 0

    env = _timing.environment()
    print(f"[gpu_report] {env}", flush=True)
    print(f"[gpu_report] modules: {', '.join(names) or 'none'}", flush=True)
    t0 = time.perf_counter()
    rows = []
    for name in names:
        left = None if args.budget is None else args.budget - (time.perf_counter() - t0)
        if args.isolate and left is not None and left < 15:
            print(f"[gpu_report] {name}: skipped, out of time", flush=True)
            rows.append(_timing.make_row(name, "-", name, note="skipped: report out of time"))
        elif args.isolate:
            limit = args.module_timeout if left is None else min(args.module_timeout, left - 5)
            rows += run_isolated(name, args.out_dir, args.quick, limit)
        else:
            rows += run_module(name, args.out_dir, args.quick)
    command = "python bench/gpu_report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(rows, args.out_dir, env, command)
    _timing.print_table(rows)
    print(f"[gpu_report] {len(rows)} rows in {time.perf_counter() - t0:.1f} s -> {args.out_dir}/results.md",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
