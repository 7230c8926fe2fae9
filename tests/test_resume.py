"""Resuming: an interrupted run continued with --resume ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train import TINY_SYNTHETIC, tiny_config  # tests/ is on sys.path under pytest

from skelcl import runlog
from skelcl.train import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic-cache")


def _train_losses(out) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in pa:
            if isinstance(pa[key], torch.Tensor):
                assert torch.equal(pa[key], pb[key]), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


# stop after step 3 (last checkpoint: step 2, mid-epoch) or 7 (last: step 6, an epoch boundary)
@pytest.mark.parametrize("stop_at", [3, 7])
def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path, cache_dir, stop_at):
    # 3 steps per epoch, checkpoints every 2 steps and at each epoch end
    common = dict(epochs=3, checkpoint_every=2)
    run(tiny_config(tmp_path / "straight", cache_dir, **common))
    stopped = run(tiny_config(tmp_path / "resumed", cache_dir, stop_after_steps=stop_at, **common))
    assert stopped == {"stopped_at_step": stop_at}
    last = runlog.load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))
    assert last["step"] == {3: 2, 7: 6}[stop_at]  # the work since the last checkpoint is lost
    run(tiny_config(tmp_path / "resumed", cache_dir, resume=True, **common))

    straight = runlog.load_checkpoint(str(tmp_path / "straight" / "checkpoint.pt"))
    resumed = runlog.load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))
    _assert_same_state(straight, resumed)
    # the metrics log is rewound to the checkpoint, so each step appears once, with the same loss
    assert _train_losses(tmp_path / "resumed") == _train_losses(tmp_path / "straight")


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path, cache_dir, capsys):
    summary = run(tiny_config(tmp_path, cache_dir, epochs=1, resume=True))
    assert summary["steps"] == 3
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, cache_dir):
    """A real ``kill -9`` of ``python -m skelcl.train``, then ``--resume`` from the last checkpoint."""
    synthetic = ",".join(f"{k}={v}" for k, v in dict(TINY_SYNTHETIC, cache_dir=cache_dir).items())
    args = [sys.executable, "-m", "skelcl.train", "--synthetic", synthetic, "--frames", "12",
            "--width", "4", "--depth", "3", "--epochs", "12", "--batch-size", "4", "--checkpoint-every", "1",
            "--no-eval", "--no-progress", "--log-every", "1"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    subprocess.run([*args, "--out", straight], env=env, cwd=REPO, check=True, capture_output=True,
                   timeout=300)

    # 36 steps, each writing a checkpoint: the kill lands long before the end
    proc = subprocess.Popen([*args, "--out", killed], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = os.path.join(killed, "checkpoint.pt")
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if os.path.isfile(ckpt) and runlog.load_checkpoint(ckpt)["step"] >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run did not reach step 3 in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step_at_kill = runlog.load_checkpoint(ckpt)["step"]
    assert 3 <= step_at_kill < 36
    subprocess.run([*args, "--out", killed, "--resume"], env=env, cwd=REPO, check=True, capture_output=True,
                   timeout=300)
    _assert_same_state(runlog.load_checkpoint(os.path.join(straight, "checkpoint.pt")),
                       runlog.load_checkpoint(ckpt))


def test_resume_with_other_settings_is_refused(tmp_path, cache_dir):
    run(tiny_config(tmp_path, cache_dir, epochs=1))
    with pytest.raises(ValueError, match="batch_size: 4 -> 6"):
        run(tiny_config(tmp_path, cache_dir, epochs=1, batch_size=6, resume=True))


def test_resume_accepts_the_same_encoder_under_another_name(tmp_path, cache_dir, capsys):
    """A run of the former default (stgcn-quarter at width 8, depth 6) resumes with the new default
    names for that network (stgcn-small, the model's own size); a network of another shape is refused,
    naming the settings."""
    common = dict(epochs=2, checkpoint_every=2, depth=3)
    run(tiny_config(tmp_path, cache_dir, stop_after_steps=3, model="stgcn-quarter", width=8, **common))
    with pytest.raises(ValueError, match="width: 8 -> 16"):
        run(tiny_config(tmp_path, cache_dir, model="stgcn-quarter", width=16, resume=True, **common))
    capsys.readouterr()
    summary = run(tiny_config(tmp_path, cache_dir, model="stgcn-small", width=None, resume=True, **common))
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 2 " in out
    assert summary["steps"] == 6
