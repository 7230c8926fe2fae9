"""The trainer end to end on a tiny synthetic set, its run directory, faults and the command line."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from skelcl import runlog
from skelcl.optim import warmup_cosine
from skelcl.train import NonFiniteLossError, TrainConfig, config_from_args, main, resolve_joint_mixing, run

# 2 subjects x 3 classes x 1 repetition x 3 cameras = 18 sequences; xview: 12 train, 6 test
TINY_SYNTHETIC = dict(num_subjects=2, reps_per_class=1, num_frames=16, num_classes=3, seed=3)


def tiny_config(out, cache_dir, **overrides) -> dict:
    """A run that takes seconds: 3 steps per epoch of a 3-block, 4-channel ST-GCN on 12 frames."""
    cfg = dict(synthetic=dict(TINY_SYNTHETIC, cache_dir=str(cache_dir)), frames=12, model="stgcn-quarter",
               width=4, depth=3, proj_dim=8, epochs=2, batch_size=4, out=str(out), log_every=1,
               progress=False, tensorboard=False, evaluate=False, probe_epochs=3, knn_k=3,
               eval_batch_size=8)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    """One complete run (pretraining + both evaluations), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("run")
    summary = run(tiny_config(out, cache_dir, evaluate=True, tensorboard=True))
    return out, summary


def test_run_writes_summary_with_the_promised_fields(tiny_run):
    out, summary = tiny_run
    for key in ("linear_top1", "random_init_linear_top1", "knn_top1", "random_init_knn_top1",
                "pretrain_seconds", "sequences_per_second", "benchmark", "data", "linear_best_epoch_top1"):
        assert key in summary, key
    for key in ("linear_top1", "random_init_linear_top1", "knn_top1", "random_init_knn_top1"):
        assert 0.0 <= summary[key] <= 100.0
    assert summary["benchmark"] == "xview" and summary["data"] == "synthetic"
    assert summary["steps"] == 2 * 3 and summary["pretrain_seconds"] > 0
    assert summary["sequences_per_second"] == pytest.approx(6 * 4 / summary["pretrain_seconds"])
    assert math.isfinite(summary["final_loss"])
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["linear_top1"] == pytest.approx(summary["linear_top1"])
    assert "linear probe top-1" in (out / "summary.md").read_text()


def test_run_directory_holds_config_metrics_checkpoint_and_plots(tiny_run):
    out, _ = tiny_run
    config = json.loads((out / "config.json").read_text())
    assert config["batch_size"] == 4 and config["steps_per_epoch"] == 3 and config["total_steps"] == 6
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 7))  # log_every=1
    assert all(math.isfinite(r["loss"]) and r["lr"] >= 0 and r["seq_per_s"] > 0 for r in train)
    warmup = round(config["warmup_epochs"] * config["steps_per_epoch"])
    schedule = warmup_cosine(None, base_lr=config["lr_resolved"], warmup_steps=warmup, total_steps=6)
    for r in train:  # the rate step s was taken with: schedule index s - 1
        assert r["lr"] == pytest.approx(schedule(r["step"] - 1), rel=1e-6)
    probe = [r for r in records if r["kind"] == "linear"]
    assert {r["encoder"] for r in probe} == {"pretrained", "random-init"}
    assert len(probe) == 2 * 3
    for name in ("loss", "lr", "accuracy"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    state = runlog.load_checkpoint(str(out / "checkpoint.pt"))
    assert state["step"] == 6 and state["epoch"] == 2 and state["batch"] == 0
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_evaluate_cli_reads_a_training_checkpoint(tiny_run, capsys):
    from skelcl.evaluate import main as evaluate_main

    out, summary = tiny_run
    result = evaluate_main(["--checkpoint", str(out / "checkpoint.pt"), "--epochs", "3", "--knn-k", "3",
                            "--batch-size", "8", "--out", str(out / "eval.json")])
    # same encoder, same features, same probe seed: the same figures as the run's own evaluation
    assert result["linear_top1"] == pytest.approx(summary["linear_top1"])
    assert result["random_init_linear_top1"] == pytest.approx(summary["random_init_linear_top1"])
    assert result["knn_top1"] == pytest.approx(summary["knn_top1"])
    assert "random-init encoder" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["knn_top1"] == pytest.approx(result["knn_top1"])


def test_amp_run_trains_with_finite_loss(tmp_path, cache_dir):
    summary = run(tiny_config(tmp_path, cache_dir, amp=True, epochs=1))
    assert "bf16" in summary["amp"] and math.isfinite(summary["final_loss"])


@pytest.mark.cuda
def test_cuda_run_pretrains_and_evaluates(tmp_path, cache_dir):
    """The whole job on a GPU: Triton views and NT-Xent, bf16 autocast, LARS, then both probes."""
    summary = run(tiny_config(tmp_path, cache_dir, amp=True, device="cuda", evaluate=True))
    assert "bf16" in summary["amp"] and math.isfinite(summary["final_loss"])
    assert 0.0 <= summary["linear_top1"] <= 100.0 and 0.0 <= summary["knn_top1"] <= 100.0


@pytest.mark.cuda
def test_cuda_train_step_never_waits_for_the_device():
    """A whole TrainStep (temporal sampling, two views, ST-GCN under bf16 autocast, NT-Xent, LARS and
    its schedule) queues its work without one host synchronisation, so the host runs ahead."""
    from skelcl.models import ContrastiveModel, build_encoder
    from skelcl.optim import LARS, warmup_cosine
    from skelcl.train import TrainStep

    torch.manual_seed(0)
    model = ContrastiveModel(build_encoder("stgcn-quarter", width_multiplier=0.5, depth=4)).cuda()
    opt = LARS(model.parameters(), lr=0.3)
    sched = warmup_cosine(opt, base_lr=0.3, warmup_steps=2, total_steps=10)
    step = TrainStep(model, opt, sched, "paper", frames=16, temperature=0.1,
                     generator=torch.Generator(device="cuda").manual_seed(0), amp_dtype=torch.bfloat16)
    x = torch.randn(8, 3, 24, 25, 2, device="cuda")
    lengths = torch.full((8,), 24, device="cuda")
    for _ in range(2):  # first steps: Triton compiles, cuDNN autotuning, optimiser state
        step(x, lengths)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step(x, lengths) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(math.isfinite(float(v)) for v in losses)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir, monkeypatch):
    import skelcl.train as train_module

    real = train_module.contrastive_loss
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(train_module, "contrastive_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 5"):
        run(tiny_config(tmp_path, cache_dir, checkpoint_every=2))
    state = runlog.load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"data": "/no/such/dataset.npz"}, "does not exist"),
        ({"benchmark": "xset120"}, "benchmark"),
        ({"views": "sideways"}, "sideways"),
        ({"batch_size": 64}, "batch_size"),
    ],
)
def test_bad_inputs_fail_before_training(tmp_path, cache_dir, overrides, match):
    with pytest.raises(ValueError, match=match):
        run(tiny_config(tmp_path / "run", cache_dir, **overrides))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_unreadable_data_file_fails_with_a_clear_message(tmp_path, cache_dir):
    bad = tmp_path / "data.npz"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="data.npz"):
        run(tiny_config(tmp_path / "run", cache_dir, data=str(bad), synthetic=None))


@pytest.mark.parametrize(
    "overrides, match",
    [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"temperature": 0}, "temperature"),
     ({"lr_rule": "cubic"}, "lr_rule"), ({"width": 0}, "width"), ({"frames": 2.5}, "frames"),
     ({"joint_mixing": "dense"}, "joint_mixing"), ({"nonsense": 1}, "unknown keys")],
)
def test_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        cfg = TrainConfig.from_dict(overrides)
        cfg.validate()


@pytest.mark.parametrize("model, widths", [("stgcn-small", (8, 8, 16, 16, 32, 32)),
                                           ("stgcn-quarter", (16,) * 4 + (32,) * 3 + (64,) * 3),
                                           ("stgcn", (64,) * 4 + (128,) * 3 + (256,) * 3)])
def test_model_flag_alone_gives_that_models_own_size(model, widths):
    """--model without --width/--depth builds the named network at its own size (the defaults do not
    shrink every model to the main job's width), and the resnets build with their own depth."""
    from skelcl.models import build_encoder
    from skelcl.train import encoder_spec

    spec = encoder_spec(config_from_args(["--model", model, "--out", "unused"]))
    assert build_encoder(spec["name"], **spec["kwargs"]).widths == widths
    spec = encoder_spec(config_from_args(["--model", "resnet18", "--out", "unused"]))
    assert spec == {"name": "resnet18", "kwargs": {}}
    spec = encoder_spec(config_from_args(["--model", "stgcn", "--width", "16", "--depth", "4", "--out", "x"]))
    assert build_encoder(spec["name"], **spec["kwargs"]).widths == (16, 16, 32, 64)


def test_joint_mixing_auto_is_sparse_only_where_cuda_graphs_replay_the_steps(monkeypatch):
    monkeypatch.delenv("SKELCL_PORTABLE_MIX", raising=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for mode in ("reduce-overhead", "max-autotune"):
        assert resolve_joint_mixing(TrainConfig(compile=mode), cuda) == "sparse"
        assert resolve_joint_mixing(TrainConfig(compile=mode), cpu) is None
    for mode in (False, True, "default", "max-autotune-no-cudagraphs"):
        assert resolve_joint_mixing(TrainConfig(compile=mode), cuda) is None
    assert resolve_joint_mixing(TrainConfig(compile="reduce-overhead", joint_mixing="bmm"), cuda) == "bmm"
    assert resolve_joint_mixing(TrainConfig(joint_mixing="aligned"), cpu) == "aligned"
    monkeypatch.setenv("SKELCL_PORTABLE_MIX", "aligned")  # the environment's choice for the run stands
    assert resolve_joint_mixing(TrainConfig(compile="reduce-overhead"), cuda) is None
    assert config_from_args(["--joint-mixing", "sparse", "--out", "unused"]).joint_mixing == "sparse"


def test_joint_mixing_reaches_the_model_and_the_run_directory(tmp_path, cache_dir, monkeypatch):
    """--joint-mixing aligned: every graph convolution of the trained model mixes that way (CPU
    autocast takes the portable path), and config.json records the choice."""
    from skelcl.models import stgcn

    calls, apply = [], stgcn._MixAligned.apply
    monkeypatch.setattr(stgcn._MixAligned, "apply", lambda *a: calls.append(1) or apply(*a))
    out = tmp_path / "aligned"
    run(tiny_config(out, cache_dir, epochs=1, amp=True, joint_mixing="aligned"))
    assert len(calls) >= 3 * 3  # 3 blocks, 3 steps
    config = json.loads((out / "config.json").read_text())
    assert config["joint_mixing"] == "aligned" and config["joint_mixing_resolved"] == "aligned"
    run(tiny_config(tmp_path / "auto", cache_dir, epochs=1))
    resolved = json.loads((tmp_path / "auto" / "config.json").read_text())["joint_mixing_resolved"]
    assert resolved == stgcn.PORTABLE_MIX  # on CPU, auto keeps the module-wide default


def test_command_line_runs_and_reports_errors(tmp_path, cache_dir, capsys):
    args = ["--synthetic", f"num_subjects=2,reps_per_class=1,num_frames=16,num_classes=3,seed=3,"
                           f"cache_dir={cache_dir}",
            "--frames", "12", "--width", "4", "--depth", "3", "--epochs", "1", "--batch-size", "4",
            "--views", "paper", "--no-eval", "--no-progress", "--out", str(tmp_path / "cli")]
    summary = main(args)
    assert summary["views"] == "paper" and summary["steps"] == 3
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["width"] == 4
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "bad"), "--no-progress"])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


# run directory helpers ---------------------------------------------------------------------------


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "ck.pt")
    runlog.atomic_save({"model": {"w": torch.ones(3)}}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        runlog.atomic_save({"model": _Unpicklable()}, path)
    assert torch.equal(runlog.load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_load_checkpoint_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        runlog.load_checkpoint(str(tmp_path / "none.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="could not be read"):
        runlog.load_checkpoint(str(tmp_path / "junk.pt"))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a skelcl checkpoint"):
        runlog.load_checkpoint(str(tmp_path / "other.pt"))


def test_runlog_truncates_train_records_after_a_step_and_survives_a_cut_line(tmp_path):
    log = runlog.RunLog(str(tmp_path), tensorboard=False)
    for step in range(1, 6):
        log.log({"kind": "train", "step": step, "loss": float(step)})
    log.log({"kind": "linear", "step": 5, "epoch": 1, "test_top1": 50.0})
    log.truncate_after(5)  # a finished run resumed at its last step: evaluation is redone
    assert [(r["kind"], r["step"]) for r in log.read_metrics()] == [("train", s) for s in range(1, 6)]
    log.truncate_after(3)
    assert [(r["kind"], r["step"]) for r in log.read_metrics()] == [("train", 1), ("train", 2), ("train", 3)]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # what a kill in the middle of a write leaves
    assert len(log.read_metrics()) == 3
    disabled = runlog.RunLog(str(tmp_path / "rank1"), enabled=False)
    disabled.log({"kind": "train", "step": 1})
    disabled.write_summary({"linear_top1": 1.0})
    assert not (tmp_path / "rank1").exists()


@pytest.mark.parametrize("value, mode", [(True, None), ("default", None),
                                         ("reduce-overhead", "reduce-overhead"),
                                         ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")])
def test_compile_modes_reach_torch_compile(tmp_path, cache_dir, monkeypatch, value, mode):
    """--compile [MODE]: the mode goes to torch.compile, and steps are marked for the CUDA-graph modes."""
    import skelcl.train as train_module

    seen, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    summary = run(tiny_config(tmp_path, cache_dir, compile=value, epochs=1))
    assert seen == [mode] and summary["steps"] == 3
    assert len(marks) == (3 if mode in train_module._GRAPHED_MODES else 0)


def test_compile_setting_is_checked():
    with pytest.raises(ValueError, match="compile must be"):
        TrainConfig(compile="fast").validate()
    from skelcl.train import config_from_args

    with pytest.raises(SystemExit):  # the CLI refuses the same (argparse choices)
        config_from_args(["--compile", "fast"])
    assert config_from_args(["--compile"]).compile is True
    assert config_from_args(["--compile", "reduce-overhead", "--amp"]).compile == "reduce-overhead"


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_run_with_reduce_overhead_compile(tmp_path, cache_dir):
    """The encoder's forward and backward replayed from CUDA graphs by torch.compile, for real."""
    summary = run(tiny_config(tmp_path, cache_dir, amp=True, device="cuda", compile="reduce-overhead"))
    assert math.isfinite(summary["final_loss"]) and summary["steps"] == 6


def test_contrastive_loss_keeps_float64_models_in_float64():
    """A float64 model's loss is formed in float64 (16-bit autocast outputs go to float32)."""
    from skelcl import reference
    from skelcl.train import contrastive_loss

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).double()
    x1, x2 = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    loss = contrastive_loss(model, x1, x2, 0.1, None, None)
    assert loss.dtype == torch.float64
    want = reference.ntxent_loss(model(x1), model(x2), 0.1)
    assert abs(loss.item() - want.item()) < 1e-12
