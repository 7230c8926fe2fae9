"""Data-parallel pretraining: ``torchrun --nproc_per_node=2 -m skelcl.train`` over gloo on CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from skelcl import runlog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = "num_subjects=2,reps_per_class=2,num_frames=16,num_classes=3,seed=3"  # 24 training sequences


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_gloo_ranks_train_and_only_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "skelcl.train",
           "--synthetic", f"{SYNTHETIC},cache_dir={tmp_path / 'cache'}", "--frames", "12", "--width", "4",
           "--depth", "3", "--epochs", "2", "--batch-size", "8", "--checkpoint-every", "2",
           "--log-every", "1", "--no-progress", "--probe-epochs", "3", "--knn-k", "3", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # printed once (rank 0), not once per rank
    assert done.stdout.count("linear top-1") == 1

    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert config["steps_per_epoch"] == 24 // 8  # each rank takes 4 of every global batch of 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert 0 <= summary["linear_top1"] <= 100 and 0 <= summary["random_init_linear_top1"] <= 100
    state = runlog.load_checkpoint(str(out / "checkpoint.pt"))
    assert state["step"] == 6 and len(state["rng"]) == 2  # every rank's random state, for resuming
    assert not any("SyncBatchNorm" in k or k.startswith("module.") for k in state["model"])
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 7))
