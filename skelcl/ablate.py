"""The paper's ablations (section 4.3): which parts of the virtual-camera transform matter.

    python -m skelcl.ablate [--data synthetic] [--epochs 20] [--seeds 0,1,2] [--out runs/ablate]
                            [--benchmarks xview,xsub] [--settings all-random,no-view-aug]
                            [--set key=value ...]

Every setting pretrains with ``skelcl.train.run`` and differs from the others only in the keys it
names (view preset, encoder size); everything else, the seed included, is shared. Each run lives
in ``OUT/<setting>/<benchmark>/seed<k>``; a run whose ``summary.json`` exists is read, not redone,
so an interrupted ablation continues where it stopped (an interrupted run itself resumes from its
checkpoint). The results go to ``OUT/runs.csv`` (one line per run), ``OUT/results.csv`` (mean and
standard deviation over seeds), ``OUT/results.md`` (the table) and ``OUT/results.png`` (the chart):
linear-evaluation top-1 of the frozen encoder on each benchmark's test split.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["SETTINGS", "Setting", "aggregate", "main", "run_ablation", "write_results"]


@dataclass(frozen=True)
class Setting:
    """One row of the ablation: trainer-config keys that differ from the shared configuration."""

    name: str
    description: str
    overrides: dict = field(default_factory=dict)


# Settings 1-6 are the view ablations of the paper, 7 compares frame- and sequence-level
# transforms, 8 varies the encoder (depth = ST-GCN blocks, width = channels of the first block).
# Settings 1-7 use BASE_ENCODER, a 6-block ST-GCN of width 4 that runs 20 settings x seeds on a
# 2-core CPU; the encoder ladder brackets it. On a GPU pass a larger base with
# ``--set depth=10 --set width=16`` (SkeletonCLR's size).
BASE_ENCODER = {"depth": 6, "width": 4}
SETTINGS: tuple[Setting, ...] = (
    Setting("all-random", "alpha, beta, gamma and d random", {"views": "paper"}),
    Setting("gamma-fixed", "alpha, beta random; gamma fixed", {"views": "no-gamma"}),
    Setting("beta-fixed", "alpha, gamma random; beta fixed", {"views": "no-beta"}),
    Setting("alpha-fixed", "beta, gamma random; alpha fixed", {"views": "no-alpha"}),
    Setting("distance-only", "distance only, viewpoint fixed", {"views": "distance-only"}),
    Setting("no-view-aug", "no view augmentation (baseline)", {"views": "none"}),
    Setting("frame-level", "setting 1, a new view per frame", {"views": "paper-frame"}),
    Setting("encoder-d4-w4", "setting 1, ST-GCN 4 blocks, width 4",
            {"views": "paper", "depth": 4, "width": 4}),
    Setting("encoder-d6-w8", "setting 1, ST-GCN 6 blocks, width 8",
            {"views": "paper", "depth": 6, "width": 8}),
    Setting("encoder-d10-w8", "setting 1, ST-GCN 10 blocks, width 8",
            {"views": "paper", "depth": 10, "width": 8}),
)
_BY_NAME = {s.name: s for s in SETTINGS}
_METRIC = "linear_top1"
_RUN_FIELDS = ("setting", "benchmark", "seed", "linear_top1", "random_init_linear_top1", "knn_top1",
               "pretrain_seconds", "run_dir")


def _run_dir(out: str, setting: str, benchmark: str, seed: int) -> str:
    return os.path.join(out, setting, benchmark, f"seed{seed}")


def _read_summary(path: str) -> dict | None:
    """A finished run's summary, or None when there is none (or only a partial one)."""
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and _METRIC in summary else None


def run_ablation(
    *,
    out: str,
    data: str = "synthetic",
    epochs: int = 20,
    seeds: Sequence[int] = (0,),
    benchmarks: Sequence[str] = ("xview", "xsub"),
    settings: Sequence[str] | None = None,
    overrides: dict | None = None,
    run_fn: Callable[[dict], dict] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run (or read back) every setting x benchmark x seed; returns one row per run.

    overrides: trainer-config keys shared by every run (for example ``{"batch_size": 64}``); a
    setting's own keys win. run_fn: the trainer entry point, ``skelcl.train.run`` by default.
    """
    names = [s.name for s in SETTINGS] if settings is None else list(settings)
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown or not names:
        raise ValueError(f"settings must be a non-empty list from {sorted(_BY_NAME)}, "
                         f"got {list(settings or [])}")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must not repeat, got {seeds}")
    benchmarks = list(benchmarks)
    if not benchmarks or len(set(benchmarks)) != len(benchmarks):
        raise ValueError(f"benchmarks must be a non-empty list without repeats, got {benchmarks}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    shared = dict(overrides or {})
    reserved = {"data", "epochs", "seed", "benchmark", "out", "resume"} & set(shared)
    if reserved:
        raise ValueError(f"overrides must not set {sorted(reserved)}: the ablation sets them per run")
    if run_fn is None:
        from skelcl.train import run as run_fn

    rows = []
    total = len(names) * len(benchmarks) * len(seeds)
    for setting in names:
        for benchmark in benchmarks:
            for seed in seeds:
                run_dir = _run_dir(out, setting, benchmark, seed)
                summary_path = os.path.join(run_dir, "summary.json")
                summary = _read_summary(summary_path)
                where = f"[{len(rows) + 1}/{total}] {setting} {benchmark} seed {seed}"
                if summary is not None:
                    log(f"{where}: done before, reading {summary_path}")
                else:
                    log(f"{where}: running in {run_dir}")
                    # an interrupted run continues from its checkpoint
                    resume = os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
                    config = {**BASE_ENCODER, **shared, **_BY_NAME[setting].overrides, "data": data,
                              "epochs": epochs,
                              "seed": seed, "benchmark": benchmark, "out": run_dir, "resume": resume}
                    result = run_fn(config)
                    # the trainer writes summary.json itself; fall back to its return value
                    summary = _read_summary(summary_path) or (result if _METRIC in (result or {}) else None)
                    if summary is None:
                        raise RuntimeError(f"run {run_dir} finished without {_METRIC!r} in its summary "
                                           "(was evaluation switched off?)")
                rows.append({"setting": setting, "benchmark": benchmark, "seed": seed, "run_dir": run_dir,
                             **{k: summary.get(k) for k in _RUN_FIELDS[3:-1]}})
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))  # sample std


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds, per (setting, benchmark), in row order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["benchmark"]), []).append(row)
    out = []
    for (setting, benchmark), group in groups.items():
        top1 = [float(r[_METRIC]) for r in group]
        mean, std = _mean_std(top1)
        rnd = [float(r["random_init_linear_top1"]) for r in group
               if r.get("random_init_linear_top1") is not None]
        out.append({
            "setting": setting, "benchmark": benchmark, "seeds": len(group),
            "linear_top1_mean": mean, "linear_top1_std": std,
            "random_init_linear_top1_mean": _mean_std(rnd)[0] if rnd else float("nan"),
            "linear_top1_values": " ".join(f"{v:.2f}" for v in top1),
        })
    return out


def _cell(mean: float, std: float) -> str:
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _markdown(summary: list[dict], command: str) -> str:
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in summary))
    settings = list(dict.fromkeys(r["setting"] for r in summary))
    cell = {(r["setting"], r["benchmark"]): r for r in summary}
    seeds = sorted({r["seeds"] for r in summary})
    lines = [
        "Linear evaluation, top-1 (%) on the test split of each benchmark"
        + (f", mean ± std over {seeds[0]} seeds" if seeds == [seeds[0]] and seeds[0] > 1 else "") + ".",
        "",
        "| # | setting | " + " | ".join(benchmarks) + " |",
        "|---|---|" + "---:|" * len(benchmarks),
    ]
    for i, name in enumerate(settings, 1):
        values = []
        for b in benchmarks:
            r = cell.get((name, b))
            values.append("—" if r is None else _cell(r["linear_top1_mean"], r["linear_top1_std"]))
        lines.append(f"| {i} | {_BY_NAME[name].description if name in _BY_NAME else name} | "
                     + " | ".join(values) + " |")
    # the untrained encoder of the default size, as the floor every setting must clear
    base = [cell.get((name, b)) for name in settings if not {"depth", "width"} & set(_overrides(name))
            for b in benchmarks]
    floor = {}
    for r in base:
        if r is not None and not math.isnan(r["random_init_linear_top1_mean"]):
            floor.setdefault(r["benchmark"], r["random_init_linear_top1_mean"])
    if floor:
        lines.append("| – | random-init encoder, no pretraining | "
                     + " | ".join(f"{floor[b]:.1f}" if b in floor else "—" for b in benchmarks) + " |")
    lines += ["", "Made with:", "", "```", command, "```", ""]
    return "\n".join(lines)


def _overrides(name: str) -> dict:
    return _BY_NAME[name].overrides if name in _BY_NAME else {}


def _chart(summary: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    benchmarks = list(dict.fromkeys(r["benchmark"] for r in summary))
    settings = list(dict.fromkeys(r["setting"] for r in summary))
    cell = {(r["setting"], r["benchmark"]): r for r in summary}
    width = 0.8 / len(benchmarks)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(settings) + 2), 4.2))
    for k, b in enumerate(benchmarks):
        xs, means, errs = [], [], []
        for i, name in enumerate(settings):
            r = cell.get((name, b))
            if r is None:
                continue
            xs.append(i + (k - (len(benchmarks) - 1) / 2) * width)
            means.append(r["linear_top1_mean"])
            errs.append(0.0 if math.isnan(r["linear_top1_std"]) else r["linear_top1_std"])
        bars = ax.bar(xs, means, width, yerr=errs if any(errs) else None, capsize=3, label=b)
        floors = [r["random_init_linear_top1_mean"] for r in summary
                  if r["benchmark"] == b and not math.isnan(r["random_init_linear_top1_mean"])
                  and not {"depth", "width"} & set(_overrides(r["setting"]))]  # the default encoder
        if floors:  # what an untrained encoder reaches: the level every setting must clear
            ax.axhline(floors[0], color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1,
                       label=f"{b}: random-init encoder")
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels(settings, rotation=30, ha="right")
    ax.set_ylabel("linear top-1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="benchmark")
    ax.set_title("Ablation: view augmentation and encoder size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[dict], out: str, command: str) -> dict[str, str]:
    """Write runs.csv, results.csv, results.md and results.png under ``out``; returns their paths."""
    os.makedirs(out, exist_ok=True)
    summary = aggregate(rows)
    paths = {k: os.path.join(out, f) for k, f in (("runs", "runs.csv"), ("csv", "results.csv"),
                                                  ("md", "results.md"), ("png", "results.png"))}
    for path, records in ((paths["runs"], rows), (paths["csv"], summary)):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    with open(paths["md"], "w") as f:
        f.write(_markdown(summary, command))
    _chart(summary, paths["png"])
    return paths


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare string such as cpu


def _parse_list(text: str, what: str, convert=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [convert(t) for t in items]
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m skelcl.ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic", help="'synthetic' or a dataset path (default: synthetic)")
    p.add_argument("--epochs", type=int, default=20, help="pretraining epochs per run (default: 20)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (default: 0)")
    p.add_argument("--out", default="runs/ablate", help="output directory (default: runs/ablate)")
    p.add_argument("--benchmarks", default="xview,xsub", help="comma-separated (default: xview,xsub)")
    p.add_argument("--settings", default=None,
                   help=f"comma-separated subset of: {', '.join(_BY_NAME)} (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer-config key shared by every run, value as JSON or a bare string; repeatable "
                        "(e.g. --set batch_size=64 --set device=cpu)")
    p.add_argument("--list", action="store_true", help="print the settings and exit")
    return p


def main(argv: Sequence[str] | None = None, run_fn: Callable[[dict], dict] | None = None) -> dict[str, str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.list:
        for i, s in enumerate(SETTINGS, 1):
            print(f"{i:2d}. {s.name:16s} {s.description}  {s.overrides}")
        return {}
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = _parse_value(value)
    rows = run_ablation(
        out=args.out,
        data=args.data,
        epochs=args.epochs,
        seeds=_parse_list(args.seeds, "--seeds", int),
        benchmarks=_parse_list(args.benchmarks, "--benchmarks"),
        settings=None if args.settings is None else _parse_list(args.settings, "--settings"),
        overrides=overrides,
        run_fn=run_fn,
    )
    command = "python -m skelcl.ablate " + " ".join(shlex.quote(a) for a in argv)
    paths = write_results(rows, args.out, command.strip())
    with open(paths["md"]) as f:
        print(f.read())
    print("wrote " + ", ".join(paths.values()))
    return paths


if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:  # bad arguments: a message, not a traceback
        sys.exit(f"python -m skelcl.ablate: error: {exc}")
