"""A run directory: what a training run leaves behind.

    RUN_DIR/config.json        the resolved configuration
    RUN_DIR/metrics.jsonl      one JSON record per line (loss, lr, sequences/s, accuracies, ...)
    RUN_DIR/checkpoint.pt      the latest checkpoint, replaced atomically
    RUN_DIR/summary.json/.md   the final figures
    RUN_DIR/plots/*.png        loss, learning rate and accuracy curves
    RUN_DIR/tensorboard/       event files, when tensorboard is installed

Only the main process of a distributed run writes; the others get a disabled ``RunLog``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from typing import Any

import torch

__all__ = ["RunLog", "atomic_save", "load_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def _jsonable(value: Any) -> Any:
    """Numbers, strings, lists and dicts as JSON accepts them (NaN/Inf become strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _atomic_write_bytes(path: str, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` that either leaves the previous file intact or replaces it whole."""
    _atomic_write_bytes(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save`; clear errors for a missing or foreign file."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ValueError(f"checkpoint {path!r} could not be read: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"checkpoint {path!r} is not a skelcl checkpoint (no 'model' entry)")
    return state


class RunLog:
    """Writes a run directory; with ``enabled=False`` (non-main ranks) every method does nothing."""

    def __init__(self, out_dir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.out_dir = out_dir
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:
                self._tb = None  # tensorboard is optional

    # paths -------------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    @property
    def checkpoint_path(self) -> str:
        return self.path(CHECKPOINT_NAME)

    # config and metrics ------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        if self.enabled:
            text = json.dumps(_jsonable(config), indent=2, sort_keys=True) + "\n"
            _atomic_write_bytes(self.path("config.json"), lambda f: f.write(text.encode()))

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl (and its numbers to TensorBoard under its 'kind')."""
        if not self.enabled:
            return
        with open(self.path("metrics.jsonl"), "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
        if self._tb is not None:
            step = int(record.get("step", 0))
            kind = record.get("kind", "train")
            for key, value in record.items():
                is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if key not in ("step", "kind") and is_number:
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def read_metrics(self) -> list[dict]:
        path = self.path("metrics.jsonl")
        if not os.path.isfile(path):
            return []
        records = []
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut short by a kill: everything after it is lost too
        return records

    def truncate_after(self, step: int) -> None:
        """Drop the records of work a run resumed at ``step`` will redo: training records logged
        after it, and evaluation records (made once training ended) from it on."""
        if not self.enabled:
            return

        def kept_record(r: dict) -> bool:
            if "step" not in r:
                return True
            return int(r["step"]) <= step if r.get("kind") == "train" else int(r["step"]) < step

        kept = [r for r in self.read_metrics() if kept_record(r)]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        _atomic_write_bytes(self.path("metrics.jsonl"), lambda f: f.write(text.encode()))

    # checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        if self.enabled:
            atomic_save(state, self.checkpoint_path)

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict | None:
        """The latest checkpoint, or None when the run directory has none yet."""
        if not os.path.isfile(self.checkpoint_path):
            return None
        return load_checkpoint(self.checkpoint_path, map_location)

    # summary and plots -------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        text = json.dumps(_jsonable(summary), indent=2, sort_keys=True) + "\n"
        _atomic_write_bytes(self.path("summary.json"), lambda f: f.write(text.encode()))
        md = _summary_markdown(summary)
        _atomic_write_bytes(self.path("summary.md"), lambda f: f.write(md.encode()))

    def plot(self) -> list[str]:
        """PNG curves of loss, learning rate and accuracy from metrics.jsonl; returns the files written."""
        if not self.enabled:
            return []
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            warnings.warn("matplotlib is not installed: no plots written", stacklevel=2)
            return []
        records = self.read_metrics()
        train = [r for r in records if r.get("kind") == "train"]
        probe = [r for r in records if r.get("kind") == "linear"]
        folder = self.path("plots")
        os.makedirs(folder, exist_ok=True)
        written = []

        def curve(name, series, ylabel, xlabel, logy=False):
            series = [(label, xs, ys) for label, xs, ys in series if xs]
            if not series:
                return
            fig, ax = plt.subplots(figsize=(6, 4))
            for label, xs, ys in series:
                ax.plot(xs, ys, label=label)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if logy:
                ax.set_yscale("log")
            if len(series) > 1:
                ax.legend()
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = os.path.join(folder, f"{name}.png")
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)

        def finite(rs, key):
            pairs = [(r["step"], r[key]) for r in rs if isinstance(r.get(key), (int, float))]
            return [p[0] for p in pairs], [p[1] for p in pairs]

        curve("loss", [("NT-Xent", *finite(train, "loss"))], "loss", "step")
        curve("lr", [("lr", *finite(train, "lr"))], "learning rate", "step")
        acc = []
        for encoder in sorted({r.get("encoder", "") for r in probe}):
            rs = [r for r in probe if r.get("encoder", "") == encoder]
            xs = [r["epoch"] for r in rs if "test_top1" in r]
            ys = [r["test_top1"] for r in rs if "test_top1" in r]
            acc.append((f"{encoder} (test top-1)", xs, ys))
        curve("accuracy", acc, "linear-probe top-1 (%)", "probe epoch")
        return written

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    return str(value)


def _summary_markdown(summary: dict) -> str:
    """A short human-readable report: headline accuracies first, then every other field."""
    lines = ["# skelcl run summary", ""]
    head = [
        ("linear_top1", "linear probe top-1, pretrained encoder (final epoch)"),
        ("random_init_linear_top1", "linear probe top-1, random-init encoder (final epoch)"),
        ("knn_top1", "kNN top-1, pretrained encoder"),
        ("random_init_knn_top1", "kNN top-1, random-init encoder"),
        ("pretrain_seconds", "pretraining wall time (s)"),
        ("sequences_per_second", "pretraining throughput (sequences/s)"),
    ]
    lines += ["| figure | value |", "|---|---|"]
    for key, label in head:
        if key in summary:
            lines.append(f"| {label} | {_fmt(summary[key])} |")
    lines += ["", "## All fields", "", "| key | value |", "|---|---|"]
    for key in sorted(summary):
        value = summary[key]
        if isinstance(value, dict):
            value = json.dumps(_jsonable(value), sort_keys=True)
        lines.append(f"| {key} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"
