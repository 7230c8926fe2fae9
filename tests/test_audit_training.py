"""The trainer, the evaluation and data-parallel training against what the design and the main job promise.

Covered here and not elsewhere: a data-parallel step (2 gloo ranks) equals one process on the whole batch;
non-finite projections stop the run naming the step; a new run never writes over another run; a
layout that does not fit the data fails before training; views are centred on the layout's centre
joint; evaluation features do not depend on where the camera stood, leave the encoder untouched and
never learn from the test split; resuming with another number of processes.
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_train import TINY_SYNTHETIC, tiny_config  # tests/ is on sys.path under pytest

from skelcl import runlog
from skelcl.data import SkeletonArrays
from skelcl.evaluate import ProbeConfig, evaluate_encoder
from skelcl.models import build_encoder
from skelcl.train import NonFiniteLossError, TrainConfig, run


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic-cache")


# ------------------------------------------------------------------------------------------------
# faults and the run directory


def test_nonfinite_projections_stop_the_run_naming_the_step(tmp_path, cache_dir, monkeypatch):
    """A diverging encoder gives NaN projections: the run stops there, keeping the checkpoint before."""
    import skelcl.train as train_module

    real = train_module.contrastive_loss
    calls = []

    def diverging(model, x1, x2, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 5:
            x1 = x1 * float("nan")
        return real(model, x1, x2, *args, **kwargs)

    monkeypatch.setattr(train_module, "contrastive_loss", diverging)
    _assert_stops_keeping_a_good_checkpoint(tmp_path, cache_dir, "step 5", good_step=4)


def test_unchecked_nonfinite_projections_stop_at_the_loss_read_back(tmp_path, cache_dir, monkeypatch):
    """On CUDA the projections are not checked every step (that would wait for each forward pass):
    the NaN loss is found when the loop reads its losses back, and still names step 5."""
    import skelcl.train as train_module

    real = train_module.contrastive_loss
    calls, checked = [], []

    def diverging(model, x1, x2, *args, **kwargs):
        calls.append(1)
        checked.append(args[-1] if len(args) > 3 else kwargs.get("check_finite", True))
        if len(calls) >= 5:
            x1 = x1 * float("nan")
        return real(model, x1, x2, *args, **kwargs)

    monkeypatch.setattr(train_module, "contrastive_loss", diverging)
    monkeypatch.setattr(train_module, "checks_projections", lambda device: False)
    _assert_stops_keeping_a_good_checkpoint(tmp_path, cache_dir, "loss is nan at step 5", good_step=4)
    assert checked and not any(checked)


def _assert_stops_keeping_a_good_checkpoint(tmp_path, cache_dir, match: str, good_step: int) -> None:
    with pytest.raises(NonFiniteLossError, match=match):
        run(tiny_config(tmp_path, cache_dir, checkpoint_every=2, log_every=10))
    state = runlog.load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["step"] == good_step
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_weights_turned_nonfinite_by_a_finite_loss_step_never_replace_the_checkpoint(
        tmp_path, cache_dir, monkeypatch):
    """The update of step 4 makes a weight NaN while step 4's loss is finite: the checkpoint due
    after it is refused and the one written at the end of the first epoch (step 3) stays."""
    from skelcl.optim import LARS

    real_step = LARS.step
    steps = []

    def poisoning_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 4:
            self.param_groups[0]["params"][0].data[0] = float("nan")
        return out

    monkeypatch.setattr(LARS, "step", poisoning_step)
    _assert_stops_keeping_a_good_checkpoint(
        tmp_path, cache_dir, "weights or BN statistics hold NaN or Inf after step 4", good_step=3)


def test_resuming_a_finished_run_keeps_its_final_loss(tmp_path, cache_dir):
    first = run(tiny_config(tmp_path, cache_dir))
    again = run(tiny_config(tmp_path, cache_dir, resume=True))
    assert again["steps"] == first["steps"]
    assert again["final_loss"] == pytest.approx(first["final_loss"])


def test_a_new_run_never_writes_over_another_run(tmp_path, cache_dir):
    out = tmp_path / "run"
    out.mkdir()
    files = {"checkpoint.pt": b"an earlier run's checkpoint", "summary.json": b'{"linear_top1": 80.0}',
             "metrics.jsonl": b'{"kind": "train", "step": 1, "loss": 1.0}\n'}
    for name, content in files.items():
        (out / name).write_bytes(content)
    with pytest.raises(ValueError, match="--resume"):
        run(tiny_config(out, cache_dir, epochs=1))
    assert {name: (out / name).read_bytes() for name in files} == files
    assert sorted(os.listdir(out)) == sorted(files)

    a_file = tmp_path / "not-a-dir"
    a_file.write_text("keep me")
    with pytest.raises(ValueError, match="not a run directory"):
        run(tiny_config(a_file, cache_dir, epochs=1))
    assert a_file.read_text() == "keep me"


def test_the_default_run_directory_moves_on_instead_of_refusing(tmp_path, monkeypatch):
    from skelcl.train import config_from_args

    monkeypatch.chdir(tmp_path)
    assert config_from_args([]).out == "runs/default"
    assert config_from_args(["--resume"]).out == "runs/default"
    os.makedirs("runs/default")
    (tmp_path / "runs/default/summary.json").write_text("{}")
    assert config_from_args([]).out == "runs/default-2"  # the main job run twice keeps both results
    assert config_from_args(["--resume"]).out == "runs/default"
    os.makedirs("runs/default-2")
    (tmp_path / "runs/default-2/checkpoint.pt").write_bytes(b"interrupted")
    assert config_from_args([]).out == "runs/default-3"
    assert config_from_args(["--resume"]).out == "runs/default-2"  # the last run, to continue it
    assert config_from_args(["--out", "runs/default"]).out == "runs/default"  # named: refused later


def test_resume_without_a_checkpoint_redoes_the_logged_steps_once(tmp_path, cache_dir):
    """A run killed before its first checkpoint left training records; starting over logs each step once."""
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in (1, 2):
            f.write(json.dumps({"kind": "train", "step": step, "loss": 9.0}) + "\n")
    run(tiny_config(tmp_path, cache_dir, epochs=1, resume=True))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["loss"] != 9.0 for r in train)


def test_a_layout_that_does_not_fit_the_data_fails_before_training(tmp_path, cache_dir):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="17 joints.*25"):
        run(tiny_config(out, cache_dir, layout="coco17"))
    assert not out.exists()


def test_layout_applies_to_in_memory_data_without_changing_the_callers_object(tmp_path):
    from skelcl.train import _load_data

    rng = np.random.default_rng(0)
    data = SkeletonArrays(x=rng.standard_normal((8, 3, 6, 25, 2)).astype(np.float32),
                          y=np.arange(8) % 2, layout="ntu25", num_classes=2)
    cfg = TrainConfig(out=str(tmp_path), layout="coco17", benchmark="given")
    with pytest.raises(ValueError, match="layout 'coco17' has 17 joints"):
        _load_data(cfg, data)
    assert data.layout == "ntu25"


def test_bad_device_and_seed_are_reported_by_name(tmp_path, cache_dir):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            run(tiny_config(tmp_path / "a", cache_dir, device="cuda"))
    with pytest.raises(ValueError, match="not a device name"):
        run(tiny_config(tmp_path / "b", cache_dir, device="quantum"))
    with pytest.raises(ValueError, match="seed"):
        TrainConfig(seed=-1).validate()


# ------------------------------------------------------------------------------------------------
# normalisation: pretraining views and evaluation features


def _random_skeletons(n, t, v, seed, *, offset=(0.3, 0.2, 3.0)) -> np.ndarray:
    """(n, 3, t, v, 2) camera-space sequences with padding: shorter sequences, person 1 often absent."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, t, v, 2)).astype(np.float32) * 0.3
    x += np.asarray(offset, dtype=np.float32)[None, :, None, None, None]
    lengths = rng.integers(t // 2, t + 1, size=n)
    for i in range(n):
        x[i, :, lengths[i]:] = 0  # padding frames
        if i % 2:
            x[i, :, :, :, 1] = 0  # one person only
        else:
            x[i, :, : t // 3, :, 1] = 0  # the second person enters later
    return x, lengths


def test_views_are_centred_on_the_layouts_centre_joint(tmp_path, monkeypatch):
    """COCO-17's centre is joint 0 (the nose): with views 'none' its first position is the origin."""
    import skelcl.train as train_module
    from skelcl.layouts import get_layout

    center = get_layout("coco17").center
    x, lengths = _random_skeletons(12, 10, 17, seed=1)
    split = np.arange(12) < 8
    data = SkeletonArrays(x=x, y=np.arange(12) % 3, layout="coco17", length=lengths, splits={"xview": split})
    real = train_module.contrastive_loss
    seen = []

    def spy(model, x1, x2, *args, **kwargs):
        seen.append(x1.detach().clone())
        return real(model, x1, x2, *args, **kwargs)

    monkeypatch.setattr(train_module, "contrastive_loss", spy)
    run(tiny_config(tmp_path, tmp_path, data="in-memory", synthetic=None, views="none", epochs=1, frames=6),
        data=data)
    assert seen
    for x1 in seen:
        present = (x1[:, :, :, :, 0] != 0).any(dim=3).any(dim=1)  # (N, T): person 0 present
        first = present.to(torch.uint8).argmax(dim=1)
        origin = x1[torch.arange(len(x1)), :, first, center, 0]
        assert origin.abs().max().item() < 1e-6


def _probe_records(encoder, train, test, **kw):
    records = []
    probe = ProbeConfig(epochs=4, knn_k=3, batch_size=8)
    result = evaluate_encoder(encoder, train, test, frames=6, batch_size=5, device="cpu", probe=probe,
                              on_epoch=records.append, **kw)
    return result, records


def _encoder_with_statistics():
    """A tiny ST-GCN whose BN running statistics and weights are not the defaults (as after pretraining)."""
    torch.manual_seed(4)
    enc = build_encoder("stgcn-quarter", layout="ntu25", width_multiplier=0.25, depth=3)
    with torch.no_grad():
        for name, t in enc.state_dict().items():
            if t.is_floating_point() and name != "A":
                t.add_(torch.rand(t.shape) * 0.5)
    return enc


def _arrays(x, lengths, y):
    return SkeletonArrays(x=x, y=y, layout="ntu25", num_classes=3, length=lengths)


def test_evaluation_does_not_depend_on_where_the_camera_stood():
    """Pretraining sees centred sequences; evaluation must too, or moving the camera changes the figures."""
    x_tr, l_tr = _random_skeletons(16, 12, 25, seed=2)
    x_te, l_te = _random_skeletons(10, 12, 25, seed=3)
    y_tr, y_te = np.arange(16) % 3, np.arange(10) % 3
    moved = []
    for x, shift in ((x_tr, (1.0, -0.5, 2.0)), (x_te, (-2.0, 0.7, 1.5))):
        present = (x != 0).any(axis=(1, 3), keepdims=True)  # (N, 1, T, 1, M): padding stays zero
        moved.append(np.where(present, x + np.asarray(shift, np.float32)[None, :, None, None, None], 0))
    enc = _encoder_with_statistics()
    a, rec_a = _probe_records(enc, _arrays(x_tr, l_tr, y_tr), _arrays(x_te, l_te, y_te))
    b, rec_b = _probe_records(enc, _arrays(moved[0], l_tr, y_tr), _arrays(moved[1], l_te, y_te))
    # the same up to rounding (interpolated frames are not exact under a shift)
    assert [r["loss"] for r in rec_b] == pytest.approx([r["loss"] for r in rec_a], rel=1e-4)
    assert b["linear_train_top1"] == pytest.approx(a["linear_train_top1"], abs=100 / 16 + 1e-9)


def test_evaluation_leaves_the_encoder_alone_and_never_learns_from_the_test_split():
    x_tr, l_tr = _random_skeletons(16, 12, 25, seed=5)
    x_te, l_te = _random_skeletons(10, 12, 25, seed=6)
    y_tr = np.arange(16) % 3
    enc = _encoder_with_statistics().train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    train = _arrays(x_tr, l_tr, y_tr)
    a, rec_a = _probe_records(enc, train, _arrays(x_te, l_te, np.arange(10) % 3))
    assert enc.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in enc.parameters())
    # other test sequences and labels: the classifier trains exactly as before
    b, rec_b = _probe_records(enc, train, _arrays(x_te[::-1].copy() * 2, l_te[::-1].copy(), np.zeros(10)))
    assert [r["loss"] for r in rec_b] == [r["loss"] for r in rec_a]
    assert [r["train_top1"] for r in rec_b] == [r["train_top1"] for r in rec_a]
    assert b["linear_train_top1"] == a["linear_train_top1"]


# ------------------------------------------------------------------------------------------------
# two gloo ranks

WORLD, N_GLOBAL, FRAMES, STEPS = 2, 6, 8, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batches():
    g = torch.Generator().manual_seed(5)
    return [torch.randn(N_GLOBAL, 3, FRAMES, 25, 2, generator=g, dtype=torch.float64) for _ in range(STEPS)]


def _train_steps(batches, world: int, group) -> tuple[list[float], dict]:
    """TrainStep with deterministic views (the second view is the sequence reversed in time and scaled)."""
    import skelcl.data.temporal as temporal
    import skelcl.ops as ops
    from skelcl.models import ContrastiveModel
    from skelcl.optim import LARS, warmup_cosine
    from skelcl.train import TrainStep

    torch.manual_seed(0)
    encoder = build_encoder("stgcn-quarter", width_multiplier=0.25, depth=3)
    model = ContrastiveModel(encoder, proj_dim=8).double()
    if world > 1:
        from skelcl.dist import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    opt = LARS(model.parameters(), lr=0.5, weight_decay=1e-3)
    sched = warmup_cosine(opt, base_lr=0.5, warmup_steps=1, total_steps=4)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    saved = temporal.sample_frames, ops.two_views
    temporal.sample_frames = lambda x, lengths, frames, **kw: x
    ops.two_views = lambda x, sampler, **kw: (x, x.flip(2) * 0.8)
    try:
        step = TrainStep(wrapped, opt, sched, None, frames=FRAMES, temperature=0.2,
                         generator=torch.Generator(), group=group, world_size=world)
        losses = [float(step(x, torch.full((len(x),), FRAMES))) for x in batches]
    finally:
        temporal.sample_frames, ops.two_views = saved
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def _worker(rank, port, out_dir, resume_config):
    import torch.distributed as dist

    from skelcl.dist import init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    init_distributed()
    per_rank = N_GLOBAL // WORLD
    batches = [x[rank * per_rank:(rank + 1) * per_rank] for x in _global_batches()]
    torch.save(_train_steps(batches, WORLD, dist.group.WORLD), os.path.join(out_dir, f"step-rank{rank}.pt"))
    # then continue a one-process run's checkpoint with two processes (run() ends the process group)
    summary = run(resume_config)
    torch.save(summary, os.path.join(out_dir, f"resume-rank{rank}.pt"))


@pytest.mark.distributed
def test_two_ranks_step_like_one_process_and_resume_a_one_process_checkpoint(tmp_path, cache_dir):
    # a one-process run stopped after its first step (24 training sequences, 3 steps per epoch)
    synthetic = dict(TINY_SYNTHETIC, reps_per_class=2, cache_dir=str(cache_dir))
    config = tiny_config(tmp_path / "run", cache_dir, synthetic=synthetic, epochs=1, batch_size=8,
                         checkpoint_every=1)
    assert run(dict(config, stop_after_steps=1)) == {"stopped_at_step": 1}

    mp.spawn(_worker, args=(_free_port(), str(tmp_path), dict(config, resume=True)), nprocs=WORLD, join=True)

    losses, state = _train_steps(_global_batches(), 1, None)
    for rank in range(WORLD):
        rank_losses, rank_state = torch.load(tmp_path / f"step-rank{rank}.pt")
        assert rank_losses == pytest.approx(losses, rel=1e-6)
        for key, value in state.items():  # weights, BN statistics
            torch.testing.assert_close(rank_state[key], value, rtol=1e-6, atol=1e-9, msg=key)
        summary = torch.load(tmp_path / f"resume-rank{rank}.pt")
        assert summary["steps"] == 3 and summary["world_size"] == WORLD
    assert runlog.load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))["step"] == 3


def test_schedule_waits_for_steps_the_grad_scaler_skips():
    """float16 + GradScaler: a step skipped for overflowing gradients must not advance the schedule."""
    import skelcl.data.temporal as temporal
    import skelcl.ops as ops
    from skelcl.models import ContrastiveModel
    from skelcl.optim import LARS, warmup_cosine
    from skelcl.train import TrainStep

    torch.manual_seed(0)
    model = ContrastiveModel(build_encoder("stgcn-quarter", width_multiplier=0.25, depth=3), proj_dim=8)
    opt = LARS(model.parameters(), lr=0.5)
    sched = warmup_cosine(opt, base_lr=0.5, warmup_steps=2, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    # An overflow, as float16 gradients would have it: the first backward puts an inf in one gradient.
    overflow = [True]
    first = next(model.parameters())
    first.register_hook(lambda g: g * float("inf") if overflow.pop() else g)
    x = torch.randn(4, 3, FRAMES, 25, 2)
    saved = temporal.sample_frames, ops.two_views
    temporal.sample_frames = lambda x, lengths, frames, **kw: x
    ops.two_views = lambda x, sampler, **kw: (x, x.flip(2) * 0.8)
    try:
        step = TrainStep(model, opt, sched, None, frames=FRAMES, temperature=0.2, generator=torch.Generator(),
                         scaler=scaler)
        before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        first_before = first.detach().clone()
        step(x, torch.full((4,), FRAMES))
        assert scaler.get_scale() == 2.0**9  # skipped: the scale halved
        assert sched.last_epoch == 0
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()
                   if k in before and "running" not in k)
        overflow.append(False)
        step(x, torch.full((4,), FRAMES))  # finite: taken, and the schedule moves
        assert scaler.get_scale() == 2.0**9 and sched.last_epoch == 1
        assert not torch.equal(first_before, first)
    finally:
        temporal.sample_frames, ops.two_views = saved
