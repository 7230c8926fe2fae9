"""Contrastive pretraining (SimCLR / NT-Xent on two virtual-camera views), then linear evaluation.

    python -m skelcl.train [--amp] [--views paper] [--out runs/x]             # one process
    torchrun --nproc_per_node=K -m skelcl.train ...                           # data parallel

One training step, all on the training device and without per-sample Python: a raw batch from
the loader (which prefetches in the background, so loading overlaps compute) -> temporal sampling
-> two random virtual-camera views -> encoder + projection on both views in one forward pass ->
NT-Xent (global negatives under DDP) -> LARS with linear warm-up and cosine decay.

After pretraining the main process evaluates the pretrained encoder and a randomly initialised one
of the same architecture (linear probe and kNN, ``skelcl.evaluate``) and writes the run directory
(``skelcl.runlog``). ``--resume`` continues from the run directory's last checkpoint; with the same
seed the result equals that of an uninterrupted run.

Defaults, chosen by measurement on a 2-core CPU so that the whole command (data generation, pretraining,
both evaluations) stays well under 10 minutes: the built-in synthetic set (cross-view split: 2,400
training sequences from cameras 2 and 3, 1,200 test sequences from camera 1), a narrow ST-GCN (``stgcn-
small``: 8-16-32 channels, 6 blocks), 20 frames, batch 128, 30 epochs, LARS at 0.075 * sqrt(B), the
paper's views ("paper": angles in 60-degree steps, distance 0-2.5 m). With ``--amp``, seeds 0, 1, 2:
linear top-1 on the camera-1 test split 91.3 / 94.0 / 92.8 % against 35.8 / 40.2 / 24.2 % for the
random-init encoder; ``--views moderate`` (yaw +-60, pitch and roll +-15 degrees) gave 75.2 / 75.9 /
72.0 % and ``--views none`` 33.8 % (seed 0). On a GPU use a larger encoder (``--model stgcn-quarter``:
SkeletonCLR's 16-...-64 ST-GCN, or ``--model stgcn``) and more epochs.
``--amp`` on CPU uses bf16 autocast (this CPU has AVX512-BF16); on CPUs without bf16 support it may
be slower than float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from skelcl.models.stgcn import PORTABLE_MIX_CHOICES
from skelcl.runlog import RunLog

__all__ = ["TrainConfig", "TrainStep", "NonFiniteLossError", "run", "main"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the last good checkpoint is kept."""


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_GRAPHED_MODES = ("reduce-overhead", "max-autotune")
JOINT_MIXINGS = ("auto", *PORTABLE_MIX_CHOICES)


@dataclass
class TrainConfig:
    """Everything a run depends on; written to RUN_DIR/config.json and into every checkpoint."""

    # data
    data: str = "synthetic"  # "synthetic" or a path understood by skelcl.data.load_dataset
    synthetic: dict | None = None  # keyword arguments of the synthetic generator
    benchmark: str = "xview"
    layout: str | None = None  # None: the data's own layout
    frames: int = 20  # frames per sequence after temporal sampling
    # model
    model: str = "stgcn-small"  # 8-16-32 channels in 6 blocks; "stgcn-quarter" is SkeletonCLR's size
    width: int | None = None  # channels of the first encoder block (None: the model's own)
    depth: int | None = None  # encoder blocks / layers (None: the model's own)
    proj_dim: int = 128
    # optimisation
    epochs: int = 30
    batch_size: int = 128  # global batch (split evenly across ranks)
    lr: float | None = None  # None: scaled_lr(base_lr, batch_size, rule=lr_rule)
    base_lr: float = 1.2  # learning rate at batch 256 (with "sqrt": SimCLR's 0.075 * sqrt(B))
    lr_rule: str = "sqrt"  # "linear" or "sqrt" batch scaling (SimCLR: sqrt for small batches)
    weight_decay: float = 1e-6
    warmup_epochs: float = 1.0
    temperature: float = 0.1
    views: str = "paper"  # a skelcl.views preset, "none" for no view augmentation
    amp: bool = False
    compile: bool | str = False  # True or a torch.compile mode ("default", "reduce-overhead", ...)
    # how ST-GCN mixes joints on a GPU: "auto" (see resolve_joint_mixing), "bmm", "aligned" or "sparse"
    joint_mixing: str = "auto"
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1" (DDP always uses its local device)
    # run directory and bookkeeping
    out: str = "runs/default"
    resume: bool = False
    checkpoint_every: int = 0  # steps between checkpoints (0: at the end of every epoch only)
    log_every: int = 10  # steps between metric records (and NaN checks)
    stop_after_steps: int | None = None  # stop abruptly after this step (interrupted-run tests)
    progress: bool = True
    tensorboard: bool = True
    # evaluation after pretraining
    evaluate: bool = True
    probe_epochs: int = 100
    probe_optimizer: str = "adam"
    knn_k: int = 20
    eval_batch_size: int = 256
    extra: dict = field(default_factory=dict)  # free-form notes carried into the summary

    def validate(self) -> None:
        positive = ("frames", "epochs", "batch_size", "proj_dim", "log_every", "probe_epochs",
                    "knn_k", "eval_batch_size")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if not (self.base_lr > 0 and math.isfinite(self.base_lr)):
            raise ValueError(f"base_lr must be a positive finite number, got {self.base_lr}")
        if self.lr_rule not in ("linear", "sqrt"):
            raise ValueError(f"lr_rule must be 'linear' or 'sqrt', got {self.lr_rule!r}")
        if self.width is not None and self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"stop_after_steps must be >= 1, got {self.stop_after_steps}")
        if self.probe_optimizer not in ("adam", "sgd"):
            raise ValueError(f"probe_optimizer must be 'adam' or 'sgd', got {self.probe_optimizer!r}")
        if self.compile not in (False, True) + COMPILE_MODES:
            raise ValueError(f"compile must be True, False or one of {COMPILE_MODES}, got {self.compile!r}")
        if self.joint_mixing not in JOINT_MIXINGS:
            raise ValueError(f"joint_mixing must be one of {JOINT_MIXINGS}, got {self.joint_mixing!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# building blocks


def _load_data(cfg: TrainConfig, data=None):
    """Load and split the data, failing with a clear message before any training starts."""
    from skelcl.data import SkeletonArrays, load_dataset

    if data is not None:
        if not isinstance(data, SkeletonArrays):
            raise ValueError(f"data must be a SkeletonArrays, got {type(data).__name__}")
        if cfg.layout is not None and cfg.layout != data.layout:  # a copy: the caller's object is kept
            data = dataclasses.replace(data, layout=cfg.layout)
    elif cfg.data != "synthetic" and not os.path.exists(cfg.data):
        raise ValueError(f"data path {cfg.data!r} does not exist")
    else:
        try:
            data = load_dataset(cfg.data, layout=cfg.layout,
                                synthetic_kwargs=cfg.synthetic if cfg.data == "synthetic" else None)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"could not load data {cfg.data!r}: {exc}") from exc
    from skelcl.layouts import get_layout

    joints = get_layout(data.layout).num_joints  # ValueError names the known layouts
    if data.x.shape[3] != joints:
        raise ValueError(f"layout {data.layout!r} has {joints} joints, but the data {cfg.data!r} has "
                         f"{data.x.shape[3]} (dim 3 of x)")
    from skelcl.data.splits import split_train_test

    train, test = split_train_test(data, cfg.benchmark)  # names the known benchmarks, refuses empty parts
    return data, train, test


def encoder_spec(cfg: TrainConfig) -> dict:
    """How to rebuild the encoder: ``build_encoder(spec['name'], layout=..., **spec['kwargs'])``."""
    from skelcl.models import ENCODER_BASE_WIDTHS

    kwargs = {}
    if cfg.width is not None:
        if cfg.model not in ENCODER_BASE_WIDTHS:
            raise ValueError(f"model must be one of {sorted(ENCODER_BASE_WIDTHS)}, got {cfg.model!r}")
        kwargs["width_multiplier"] = cfg.width / ENCODER_BASE_WIDTHS[cfg.model]
    if cfg.depth is not None:
        kwargs["depth"] = cfg.depth
    return {"name": cfg.model, "kwargs": kwargs}


def _amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool, str]:
    """(autocast dtype or None, use a GradScaler, note): bf16 where supported, else fp16 + scaler."""
    if not cfg.amp:
        return None, False, "fp32"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, False, "bf16 autocast"
        return torch.float16, True, "fp16 autocast + GradScaler (no bf16 on this GPU)"
    return torch.bfloat16, False, "bf16 autocast on CPU"


# files that make a directory a run of its own (resumable, or finished): never overwritten by a new run
_RUN_FILES = ("checkpoint.pt", "summary.json")


def _run_files(out: str) -> list[str]:
    return [f for f in _RUN_FILES if os.path.isfile(os.path.join(out, f))]


def _check_out_dir(cfg: TrainConfig) -> None:
    """A new run (no --resume) must not write over the checkpoint or the results of another run."""
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ValueError(f"--out {cfg.out!r} is a file, not a run directory")
    if cfg.resume:
        return
    found = _run_files(cfg.out)
    if found:
        raise ValueError(f"run directory {cfg.out!r} already holds a run ({', '.join(found)}); pass --resume "
                         "to continue it, or choose another --out")


def _all_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer is finite (one device sync)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _last_logged_loss(log: RunLog) -> float:
    """The last training loss in the run's metrics (a resumed run that had no step left to do)."""
    losses = [r["loss"] for r in log.read_metrics() if r.get("kind") == "train" and "loss" in r]
    return losses[-1] if losses else float("nan")


def _gather_objects(obj, world_size: int) -> list:
    """Every rank's ``obj`` on every rank (checkpoints store each rank's random state)."""
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _rng_state(aug_gen: torch.Generator, device: torch.device) -> dict:
    state = {"aug": aug_gen.get_state(), "torch": torch.random.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, aug_gen: torch.Generator, device: torch.device) -> None:
    aug_gen.set_state(state["aug"])
    torch.random.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checks_projections(device: torch.device) -> bool:
    """Whether each step checks its projections for NaN/Inf before the loss (see contrastive_loss).

    Not on CUDA: the check reads a value back, so the host would wait for every forward pass
    instead of queueing the backward behind it. There a non-finite projection gives a NaN loss,
    which the loop's periodic loss read-back reports, naming the step (and no checkpoint is ever
    written from the non-finite weights that follow)."""
    return device.type != "cuda"


def contrastive_loss(model: nn.Module, x1, x2, temperature: float, group, amp_dtype,
                     check_finite: bool = True) -> torch.Tensor:
    """NT-Xent of the projections of both views; one forward pass over the 2N sequences.

    With ``check_finite``, projections holding NaN or Inf (on any rank) raise NonFiniteLossError: the
    loss cannot be formed. Without, the loss is NaN.
    """
    from skelcl.ops import NonFiniteInputError, ntxent_loss

    with torch.autocast(x1.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        z = model(torch.cat([x1, x2]))
    z1, z2 = (z if z.dtype == torch.float64 else z.float()).chunk(2)  # autocast's 16-bit out: float32
    try:
        return ntxent_loss(z1, z2, temperature, group=group, check_finite=check_finite)
    except NonFiniteInputError as exc:  # the loss checks its inputs (on every rank alike)
        raise NonFiniteLossError(f"the projections hold NaN or Inf ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# the run


def run(config: TrainConfig | dict, data=None) -> dict:
    """Pretrain, evaluate, write the run directory; returns the summary.

    ``data``: an in-memory ``SkeletonArrays`` to use instead of loading ``config.data`` (which
    then only labels the run).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    cfg.validate()
    from skelcl.dist import cleanup, init_distributed

    info = init_distributed()
    try:
        return _run(cfg, info, data)
    finally:
        cleanup()


# settings a resumed run must share with the run that wrote the checkpoint
_RESUME_KEYS = ("data", "synthetic", "benchmark", "layout", "frames", "model", "width", "depth", "proj_dim",
                "epochs", "batch_size", "lr", "base_lr", "lr_rule", "weight_decay", "warmup_epochs",
                "temperature", "views", "amp", "seed")


def resolve_joint_mixing(cfg: TrainConfig, device: torch.device) -> str | None:
    """How ST-GCN mixes the joints in this run (None: the model's default, ``stgcn.PORTABLE_MIX``, which
    SKELCL_PORTABLE_MIX sets). An explicit ``joint_mixing`` is used as given. "auto" picks the sparse
    Triton kernels where the steps are replayed from CUDA graphs (``--compile reduce-overhead`` or
    ``max-autotune`` on a GPU): 8-21 % more throughput there than the batched product at widths 16 and
    64 on an H200 (bench/RESULTS.md); in eager mode their extra launches make them lose on most hosts."""
    if cfg.joint_mixing != "auto":
        return cfg.joint_mixing
    if device.type != "cuda" or cfg.compile not in _GRAPHED_MODES or os.environ.get("SKELCL_PORTABLE_MIX"):
        return None
    return "sparse"


def _architecture(spec: dict, layout: str) -> tuple:
    """The encoder a spec builds, as its class and parameter and buffer shapes (built on the meta
    device: no memory, no random draws), so that two specs naming one network compare equal."""
    from skelcl.models import build_encoder

    with torch.device("meta"):
        encoder = build_encoder(spec["name"], layout=layout, **spec.get("kwargs", {}))
    return type(encoder).__name__, [(k, tuple(v.shape)) for k, v in encoder.state_dict().items()]


def _check_resumable(cfg: TrainConfig, saved: dict, saved_spec: dict | None = None, layout: str = "") -> None:
    """Refuses to resume with settings that change the run. The encoder counts as unchanged when it
    has the same architecture, whatever names it (``--model stgcn-small`` is ``stgcn-quarter`` at
    width 8 and depth 6, the default of earlier versions)."""
    now = dataclasses.asdict(cfg)
    keys = _RESUME_KEYS
    same_encoder = saved_spec is not None and (
        _architecture(saved_spec, layout) == _architecture(encoder_spec(cfg), layout))
    if same_encoder:
        keys = tuple(k for k in keys if k not in ("model", "width", "depth"))
    changed = [k for k in keys if k in saved and saved[k] != now[k]]
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"--resume: the checkpoint in {cfg.out} was written with other settings ({detail})")


class TrainStep:
    """One optimisation step on a raw batch, all on its device; used by the loop and the benchmarks.

    temporal sampling -> two views -> one forward over both -> NT-Xent -> backward -> LARS + schedule.
    """

    def __init__(self, model: nn.Module, optimizer, scheduler, sampler, *, frames: int, temperature: float,
                 generator: torch.Generator, amp_dtype: torch.dtype | None = None, scaler=None, group=None,
                 world_size: int = 1, center_joint: int = 1, cudagraph_steps: bool = False):
        self.model, self.optimizer, self.scheduler, self.sampler = model, optimizer, scheduler, sampler
        self.frames, self.temperature, self.generator = frames, temperature, generator
        self.amp_dtype, self.scaler, self.group, self.world_size = amp_dtype, scaler, group, world_size
        self.center_joint = center_joint  # the layout's body centre, the origin of both views
        # torch.compile modes that replay CUDA graphs must be told where a step begins, so that they
        # may reuse the previous step's graph memory
        self.cudagraph_steps = cudagraph_steps

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        from skelcl.data.temporal import sample_frames
        from skelcl.ops import two_views

        if self.cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        x = sample_frames(x, lengths, self.frames, generator=self.generator, random_crop=True)
        x1, x2 = two_views(x, self.sampler, generator=self.generator, center_joint=self.center_joint)
        loss = contrastive_loss(self.model, x1, x2, self.temperature, self.group, self.amp_dtype,
                                checks_projections(x.device))
        # Each rank's backward already yields its share of the exact global-loss gradient
        # (skelcl.ops.ntxent_loss with a group); DDP averages over ranks, so scale by the
        # world size to turn that average into the sum.
        self.optimizer.zero_grad(set_to_none=True)
        to_backprop = loss * self.world_size if self.world_size > 1 else loss
        stepped = True
        if self.scaler is not None:
            # float16 only (GPUs without bfloat16): the scaler skips a step whose gradients overflowed
            # and then lowers its scale. The schedule counts steps taken, so it waits too; reading the
            # scale twice is a host sync that bfloat16 and float32 training never pay.
            self.scaler.scale(to_backprop).backward()
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale
        else:
            to_backprop.backward()
            self.optimizer.step()
        if self.scheduler is not None and stepped:
            self.scheduler.step()
        return loss.detach()


def _run(cfg: TrainConfig, info, data=None) -> dict:
    from skelcl.data.loader import BatchLoader
    from skelcl.evaluate import ProbeConfig, evaluate_encoder, random_encoder, resolve_device
    from skelcl.layouts import get_layout
    from skelcl.models import ContrastiveModel, build_encoder, stgcn
    from skelcl.optim import LARS, scaled_lr, warmup_cosine
    from skelcl.views import get_sampler

    rank, world = info.rank, info.world_size
    device = info.device if world > 1 or cfg.device == "auto" else resolve_device(cfg.device)
    _check_out_dir(cfg)
    if cfg.compile in _GRAPHED_MODES and world > 1:  # refused before any data is loaded
        raise ValueError(f"--compile {cfg.compile} replays CUDA graphs, which do not mix with DDP's gradient "
                         "all-reduce here: use --compile default with several processes")
    if device.type == "cpu":  # no page faults on every step's fresh activation buffers (skelcl.hostmem)
        from skelcl.hostmem import retain_freed_host_memory

        retain_freed_host_memory()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    sampler = get_sampler(cfg.views)  # bad preset names fail here, before any work
    data, train_set, test_set = _load_data(cfg, data)
    layout = data.layout
    if len(train_set) < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(train_set)} training sequences")

    log = RunLog(cfg.out, enabled=info.is_main, tensorboard=cfg.tensorboard)
    amp_dtype, use_scaler, amp_note = _amp_settings(cfg, device)

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    spec = encoder_spec(cfg)
    encoder = build_encoder(spec["name"], layout=layout, **spec["kwargs"])
    model = ContrastiveModel(encoder, proj_dim=cfg.proj_dim)
    joint_mixing = resolve_joint_mixing(cfg, device)
    if joint_mixing is not None:
        stgcn.set_portable_mix(model, joint_mixing)
    if world > 1:
        from skelcl.dist import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    model = model.to(device)
    raw_model = model

    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.base_lr, cfg.batch_size, rule=cfg.lr_rule)
    opt = LARS(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    loader = BatchLoader(train_set, cfg.batch_size // world, shuffle=True, drop_last=True, seed=cfg.seed,
                         rank=rank, world_size=world, device=device, pin_memory=device.type == "cuda",
                         prefetch=2)
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    sched = warmup_cosine(opt, base_lr=lr, warmup_steps=warmup_steps, total_steps=total_steps)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + rank)

    epoch, batch_in_epoch, step, pretrain_s, seen = 0, 0, 0, 0.0, 0
    # every rank reads the checkpoint itself (torchrun's processes share the run directory)
    state = RunLog(cfg.out, enabled=False).load_checkpoint(map_location=device) if cfg.resume else None
    if cfg.resume:
        if state is None:
            print(f"--resume: no checkpoint in {cfg.out}, starting from scratch", file=sys.stderr)
        else:
            _check_resumable(cfg, state["config"], state.get("encoder_spec"), layout)
            raw_model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            saved_rng = state["rng"]  # one entry per process of the run that wrote the checkpoint
            if len(saved_rng) != world and info.is_main:
                print(f"--resume: the checkpoint was written by {len(saved_rng)} process(es), this run has "
                      f"{world}; the batches are the same, the augmentation draws differ from an "
                      "uninterrupted run", file=sys.stderr)
            if rank < len(saved_rng):
                _set_rng_state(saved_rng[rank], aug_gen, device)
            epoch, batch_in_epoch, step = state["epoch"], state["batch"], state["step"]
            pretrain_s, seen = state["pretrain_seconds"], state["sequences_seen"]
            log.truncate_after(step)
            if info.is_main:
                print(f"resumed from {log.checkpoint_path} at step {step} "
                      f"(epoch {epoch}, batch {batch_in_epoch})")
    if step == 0 and os.path.isfile(log.path("metrics.jsonl")):
        log.truncate_after(0)  # training records of a run stopped before its first checkpoint: redone now
    resolved = dataclasses.asdict(cfg) | {"lr_resolved": lr, "world_size": world, "device": str(device),
                                          "layout_resolved": layout, "amp_mode": amp_note,
                                          "joint_mixing_resolved": joint_mixing or stgcn.PORTABLE_MIX,
                                          "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                                          "train_sequences": len(train_set), "test_sequences": len(test_set)}
    log.write_config(resolved)
    if info.is_main:
        print(f"pretraining {cfg.model} on {cfg.data}/{cfg.benchmark}: {len(train_set)} sequences, "
              f"{cfg.epochs} epochs x {steps_per_epoch} steps, batch {cfg.batch_size}, lr {lr:.4g}, "
              f"views {cfg.views!r}, {amp_note}, {world} process(es) on {device}")

    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = model
    if cfg.compile:
        mode = None if cfg.compile in (True, "default") else cfg.compile
        if device.type == "cpu":
            from skelcl.models.stgcn import load_cpu_kernels

            load_cpu_kernels()  # loaded here, not inside the traced forward
        step_model = torch.compile(model, mode=mode)
    group = None
    if world > 1:
        import torch.distributed as dist

        group = dist.group.WORLD

    train_step = TrainStep(step_model, opt, sched, sampler, frames=cfg.frames, temperature=cfg.temperature,
                           generator=aug_gen, amp_dtype=amp_dtype, scaler=scaler, group=group,
                           world_size=world, center_joint=get_layout(layout).center,
                           cudagraph_steps=cfg.compile in _GRAPHED_MODES)

    def checkpoint(next_epoch: int, next_batch: int) -> None:
        # A step can turn the weights non-finite while its own loss was still finite: never let such
        # weights replace the last good checkpoint (every rank holds the same weights, so all raise).
        if not _all_finite(raw_model):
            raise NonFiniteLossError(f"the weights or BN statistics hold NaN or Inf after step {step} "
                                     f"(epoch {epoch}); stopping. {kept()}")
        rng = _gather_objects(_rng_state(aug_gen, device), world)
        if info.is_main:
            log.save_checkpoint({
                "model": raw_model.state_dict(), "encoder": raw_model.encoder.state_dict(),
                "encoder_spec": spec, "layout": layout, "config": dataclasses.asdict(cfg),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng,
                "epoch": next_epoch, "batch": next_batch, "step": step,
                "pretrain_seconds": pretrain_s, "sequences_seen": seen,
            })

    progress = None
    if info.is_main and cfg.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, desc="pretrain")

    pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet checked: avoids a sync per step

    last_loss = [float("nan")]
    step_lr = [float("nan")]  # the learning rate the last step used (the schedule moves on after it)

    def kept() -> str:
        return f"{log.checkpoint_path} is the last good checkpoint" if os.path.isfile(
            log.checkpoint_path) else "no checkpoint was written yet"

    def flush(t_last: float, seen_last: int) -> None:
        """Check the pending losses for NaN/Inf and write one metrics record."""
        if not pending:
            return
        values = torch.stack([loss for _, loss in pending]).tolist()
        for (s, _), v in zip(pending, values):
            if not math.isfinite(v):
                raise NonFiniteLossError(f"loss is {v} at step {s} (epoch {epoch}); stopping. {kept()}")
        dt = max(time.perf_counter() - t_last, 1e-9)
        last_loss[0] = sum(values) / len(values)
        log.log({"kind": "train", "step": pending[-1][0], "epoch": epoch, "loss": last_loss[0],
                 "lr": step_lr[0], "seq_per_s": (seen - seen_last) / dt})
        pending.clear()
        if progress is not None:
            progress.set_postfix(loss=f"{last_loss[0]:.4f}", seq_s=f"{(seen - seen_last) / dt:.0f}")


    stopped = False
    model.train()
    while epoch < cfg.epochs and not stopped:
        t_last, seen_last = time.perf_counter(), seen
        t_prev = time.perf_counter()
        batches = loader.iter_from(epoch, batch_in_epoch)
        try:
            for x, _y, lengths in batches:
                step_lr[0] = float(opt.param_groups[0]["lr"])
                try:
                    loss = train_step(x, lengths)
                except NonFiniteLossError as exc:
                    flush(t_last, seen_last)  # an earlier step's non-finite loss is the one to report
                    raise NonFiniteLossError(f"{exc} at step {step + 1} (epoch {epoch}); stopping. "
                                             f"{kept()}") from exc
                step += 1
                batch_in_epoch += 1
                seen += cfg.batch_size
                pending.append((step, loss))
                if step % cfg.log_every == 0:
                    flush(t_last, seen_last)
                    t_last, seen_last = time.perf_counter(), seen
                if progress is not None:
                    progress.update(1)
                now = time.perf_counter()
                pretrain_s += now - t_prev  # includes any wait for the loader, excludes checkpoint writes
                t_prev = now
                mid_epoch = batch_in_epoch < steps_per_epoch  # epoch ends are checkpointed below
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and mid_epoch:
                    flush(t_last, seen_last)
                    checkpoint(epoch, batch_in_epoch)
                    t_prev = time.perf_counter()
                if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
                    stopped = True  # an interruption: no checkpoint, no evaluation
                    break
        finally:
            batches.close()  # stops the loader's prefetch thread when the epoch is left early
        if stopped:
            break
        flush(t_last, seen_last)
        epoch, batch_in_epoch = epoch + 1, 0
        checkpoint(epoch, 0)
    if progress is not None:
        progress.close()
    if stopped:
        log.close()
        return {"stopped_at_step": step}
    summary = {
        "data": cfg.data, "benchmark": cfg.benchmark, "split": cfg.benchmark, "layout": layout,
        "model": cfg.model, "views": cfg.views, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "steps": step, "world_size": world, "device": str(device), "amp": amp_note,
        "train_sequences": len(train_set), "test_sequences": len(test_set),
        "pretrain_seconds": pretrain_s, "sequences_per_second": seen / max(pretrain_s, 1e-9),
        "final_loss": last_loss[0] if math.isfinite(last_loss[0]) else _last_logged_loss(log),
    } | ({"extra": cfg.extra} if cfg.extra else {})

    if cfg.evaluate and info.is_main:
        probe = ProbeConfig(epochs=cfg.probe_epochs, optimizer=cfg.probe_optimizer, knn_k=cfg.knn_k,
                            seed=cfg.seed)
        plain = build_encoder(spec["name"], layout=layout, **spec["kwargs"]).to(device)
        plain.load_state_dict(raw_model.encoder.state_dict())  # a plain copy: no SyncBN/DDP wrappers
        results = {}
        for name, enc in (("pretrained", plain), ("random-init", random_encoder(spec, layout, cfg.seed))):
            def on_epoch(rec, name=name):
                log.log({"kind": "linear", "encoder": name, "step": step, **rec})

            results[name] = evaluate_encoder(enc.to(device), train_set, test_set, frames=cfg.frames,
                                             batch_size=cfg.eval_batch_size, device=device, probe=probe,
                                             on_epoch=on_epoch)
        pre, rnd = results["pretrained"], results["random-init"]
        summary |= {
            "linear_top1": pre["linear_top1"], "random_init_linear_top1": rnd["linear_top1"],
            "knn_top1": pre["knn_top1"], "random_init_knn_top1": rnd["knn_top1"],
            "linear_best_epoch_top1": pre["linear_best_epoch_top1"],
            "random_init_linear_best_epoch_top1": rnd["linear_best_epoch_top1"],
            "linear_train_top1": pre["linear_train_top1"], "probe": dataclasses.asdict(probe),
            "eval_seconds": pre["eval_seconds"] + rnd["eval_seconds"],
        }
        print(f"linear top-1 on the {cfg.benchmark} test split (final probe epoch): "
              f"pretrained {pre['linear_top1']:.2f}%  vs  random-init {rnd['linear_top1']:.2f}%  "
              f"({pre['linear_top1'] - rnd['linear_top1']:+.2f} points)")
        print(f"kNN top-1 (k={cfg.knn_k}): pretrained {pre['knn_top1']:.2f}%  vs  random-init "
              f"{rnd['knn_top1']:.2f}%")
    if info.is_main:
        print(f"pretraining: {pretrain_s:.1f} s, {summary['sequences_per_second']:.0f} sequences/s; "
              f"run directory {cfg.out}")
    log.write_summary(summary)
    log.plot()
    log.close()
    if world > 1:  # the other ranks wait here for the whole evaluation: a barrier with a long timeout
        from skelcl.dist import wait_for_all

        wait_for_all()
    return summary


# ---------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m skelcl.train", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--data", default=d.data, help="'synthetic' or a dataset file/directory (ST-GCN .npy, CTR-GCN .npz, "
                                     "pyskl .pkl, raw .skeleton folder)")
    a("--benchmark", default=d.benchmark,
      help="split: xview, xsub, xsub60, xview60, xsub120, xset120, given, fold1, fold2, ... (pyskl folds)")
    a("--layout", default=None, help="joint layout (ntu25, kinect20, coco17); default: the data's")
    a("--frames", type=int, default=d.frames, help="frames per sequence after temporal sampling")
    a("--model", default=d.model,
      help="encoder: stgcn-small (default: 8-16-32 channels, 6 blocks, sized for a CPU), stgcn-quarter "
           "(SkeletonCLR's 16-...-64), stgcn (the original 64-...-256), resnet10, resnet18, resnet34")
    a("--width", type=_int_or_model_default, default=d.width,
      help="channels of the first encoder block (default: the model's own, 8 for stgcn-small, 16 for "
           "stgcn-quarter, 64 for stgcn and the resnets)")
    a("--depth", type=_int_or_model_default, default=d.depth,
      help="encoder blocks or layers (default: the model's own, 6 for stgcn-small, 10 for stgcn and "
           "stgcn-quarter, N for resnetN)")
    a("--epochs", type=int, default=d.epochs)
    a("--batch-size", type=int, default=d.batch_size, help="global batch size")
    a("--lr", type=float, default=None, help="LARS learning rate (default: scaled to the batch size)")
    a("--base-lr", type=float, default=d.base_lr, help="learning rate at batch 256, scaled to --batch-size")
    a("--lr-rule", choices=["linear", "sqrt"], default=d.lr_rule)
    a("--temperature", type=float, default=d.temperature)
    a("--views", default=d.views, help="view preset: paper, paper-frame, moderate, no-gamma, no-beta, "
                                       "no-alpha, distance-only, none")
    a("--amp", action="store_true", help="bfloat16 autocast (float16 + GradScaler on GPUs without bf16)")
    a("--compile", nargs="?", const=True, default=False, choices=COMPILE_MODES, metavar="MODE",
      help="torch.compile the model; MODE: " + ", ".join(COMPILE_MODES) + " (reduce-overhead replays the "
           "encoder's forward and backward from CUDA graphs: for small widths, whose steps wait on the host)")
    a("--joint-mixing", default=d.joint_mixing, choices=JOINT_MIXINGS,
      help="how ST-GCN mixes the joints on a GPU: the batched product (bmm, the default), a transposed, "
           "padded matrix (aligned) or sparse Triton kernels (sparse); auto: sparse when --compile "
           "reduce-overhead replays the steps from CUDA graphs, where it is the fastest")
    a("--out", default=None, help=f"run directory (default: {d.out}, or {d.out}-2, -3, ... when it holds "
                                  "a run; with --resume the last of these)")
    a("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    a("--seed", type=int, default=d.seed)
    a("--device", default=d.device)
    a("--checkpoint-every", type=int, default=d.checkpoint_every,
      help="steps between checkpoints (0: at the end of each epoch)")
    a("--log-every", type=int, default=d.log_every)
    a("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    a("--probe-epochs", type=int, default=d.probe_epochs)
    a("--probe-optimizer", choices=["adam", "sgd"], default=d.probe_optimizer)
    a("--knn-k", type=int, default=d.knn_k)
    a("--no-eval", action="store_true", help="skip the linear evaluation after pretraining")
    a("--no-progress", action="store_true")
    a("--synthetic", default=None, metavar="KEY=VALUE,...",
      help="synthetic generator settings, e.g. num_subjects=20,reps_per_class=1,num_frames=64")
    return p


def _int_or_model_default(text: str) -> int | None:
    """An integer, or 'model' for the encoder preset's own value."""
    if text == "model":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'model', got {text!r}") from None


def _parse_key_values(text: str) -> dict:
    """'a=1,b=0.5,c=x' -> {'a': 1, 'b': 0.5, 'c': 'x'}."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--synthetic: expected KEY=VALUE items, got {item!r}")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def default_run_dir(resume: bool) -> str:
    """The run directory when ``--out`` is not given: ``runs/default``, else ``runs/default-2``, -3, ...
    A new run takes the first that holds no run (so running the main job again keeps the last
    results); ``--resume`` takes the last one that does."""
    def numbered(i: int) -> str:
        return TrainConfig.out if i == 1 else f"{TrainConfig.out}-{i}"

    i = 1
    while _run_files(numbered(i)):
        i += 1
    return numbered(max(1, i - 1)) if resume else numbered(i)


def config_from_args(argv=None) -> TrainConfig:
    args = _parser().parse_args(argv)
    if args.out is None:  # every torchrun process resolves it before any of them creates a directory
        args.out = default_run_dir(args.resume)
    values = {k: v for k, v in vars(args).items()
              if k not in ("no_eval", "no_progress", "synthetic")}
    values["evaluate"] = not args.no_eval
    values["progress"] = not args.no_progress
    if args.synthetic:
        values["synthetic"] = _parse_key_values(args.synthetic)
    return TrainConfig.from_dict(values)


def main(argv=None) -> dict:
    try:
        return run(config_from_args(argv))
    except (ValueError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ValueError) else 3)


if __name__ == "__main__":
    main()
