"""Linear evaluation and kNN of a frozen encoder (paper section 4.1).

    python -m skelcl.evaluate --checkpoint RUN_DIR/checkpoint.pt [--data synthetic|PATH] [--benchmark xview]

Features ``h = f_enc(x)`` are extracted once (deterministic temporal sampling, no augmentation; each
sequence normalised as pretraining normalises it, origin at the body centre of its first frame),
standardised with the training-set mean and standard deviation, and a linear classifier is trained
on them with Adam or SGD. The reported figure is the test top-1 after the *final* probe epoch; the
best test top-1 over probe epochs is also returned, labelled as such, because choosing an epoch on
the test set is optimistic. kNN uses cosine similarity with similarity-weighted votes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from skelcl.runlog import load_checkpoint

__all__ = [
    "ProbeConfig",
    "extract_features",
    "center_sequences",
    "linear_probe",
    "knn_top1",
    "evaluate_encoder",
    "encoder_from_checkpoint",
    "random_encoder",
    "resolve_device",
    "main",
]


@dataclass
class ProbeConfig:
    """How the frozen features are evaluated."""

    epochs: int = 100
    optimizer: str = "adam"  # "adam" or "sgd"
    lr: float | None = None  # None: 0.01 for Adam, 0.1 for SGD (features are standardised)
    weight_decay: float = 0.0
    batch_size: int = 256
    knn_k: int = 20
    knn_temperature: float = 0.07  # votes weighted by exp(cosine / t)
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else the CPU; otherwise the device named, or a
    ValueError saying why it cannot be used on this machine."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a device name ({exc})") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    return resolved


def center_sequences(x: Tensor, center_joint: int) -> Tensor:
    """Move the origin to person 0's ``center_joint`` at the first frame where person 0 is present.

    The normalisation both pretraining views start from (the ``none`` view); absent (all-zero)
    (frame, person) slots stay exactly zero. x: (N, 3, T, V, M).
    """
    from skelcl.ops import view_augment

    camera = x.new_zeros(x.shape[0], 3, dtype=torch.float32)  # no rotation, no shift: centring only
    return view_augment(x, camera, camera, center_joint=center_joint)


@torch.no_grad()
def extract_features(
    encoder: nn.Module, data, *, frames: int, batch_size: int = 256, device=None,
    center_joint: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(features (N, D) float32 on CPU, labels (N,) int64) of every sequence of ``data``, in order.

    The encoder runs in eval mode (BN running statistics, no dropout); frames are sampled
    deterministically (``random_crop=False``) so the features do not depend on a seed. With
    ``center_joint``, each sampled sequence is centred on that joint (``center_sequences``) before
    the encoder, as the pretraining views are.
    """
    from skelcl.data.loader import BatchLoader
    from skelcl.data.temporal import sample_frames

    if len(data) == 0:
        raise ValueError("data is empty: no sequences to extract features from")
    device = resolve_device(device)
    was_training = encoder.training
    encoder.eval()
    loader = BatchLoader(data, batch_size, shuffle=False, drop_last=False, seed=0, rank=0, world_size=1,
                         device=device, pin_memory=False, prefetch=2)
    loader.set_epoch(0)
    feats, labels = [], []
    for x, y, lengths in loader:
        x = sample_frames(x, lengths, frames, random_crop=False)
        if center_joint is not None:
            x = center_sequences(x, center_joint)
        h = encoder(x)
        feats.append(h.float().cpu())
        labels.append(y.cpu())
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def _standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)  # constant features would divide by zero
    return [(t - mean) / std for t in (train, *others)]


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    config: ProbeConfig | None = None,
    *,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train a linear classifier on standardised features; report the final test top-1 (in %).

    Returns ``linear_top1`` (final epoch), ``linear_train_top1`` (final epoch) and
    ``linear_best_epoch_top1`` / ``linear_best_epoch`` (best test top-1 over epochs, chosen on the
    test set, so optimistic and labelled as such). ``on_epoch`` receives one record per epoch.
    """
    cfg = config or ProbeConfig()
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x and test_x must be (N, D) with one D, got {tuple(train_x.shape)} "
                         f"and {tuple(test_x.shape)}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("features and labels must have the same number of rows")
    if len(train_x) < 2 or len(test_x) == 0:
        raise ValueError(f"need >= 2 training and >= 1 test samples, got {len(train_x)} and {len(test_x)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    train_x, test_x = _standardise(train_x.double(), test_x.double())
    train_x, test_x = train_x.float(), test_x.float()
    train_y, test_y = train_y.long(), test_y.long()

    gen = torch.Generator().manual_seed(cfg.seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # nn.Linear's initialisation draws from the global generator
    clf = nn.Linear(train_x.shape[1], num_classes)
    torch.random.set_rng_state(torch_state)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr or 1e-2, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(clf.parameters(), lr=cfg.lr or 0.1, momentum=0.9, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps_per_epoch)

    def top1(x, y):
        with torch.no_grad():
            return float((clf(x).argmax(1) == y).double().mean() * 100)

    best, best_epoch, test_acc, train_acc = -1.0, 0, 0.0, 0.0
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = nn.functional.cross_entropy(clf(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        test_acc, train_acc = top1(test_x, test_y), top1(train_x, train_y)
        if test_acc > best:
            best, best_epoch = test_acc, epoch
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "loss": float(loss.detach()), "train_top1": train_acc,
                      "test_top1": test_acc})
    return {
        "linear_top1": test_acc,
        "linear_train_top1": train_acc,
        "linear_best_epoch_top1": best,
        "linear_best_epoch": best_epoch,
    }


def knn_top1(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
    *, k: int = 20, temperature: float = 0.07, chunk: int = 1024,
) -> float:
    """Top-1 (in %) of a cosine-similarity kNN classifier with exp(sim / temperature) weighted votes."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("kNN needs at least one training and one test sample")
    k = min(k, len(train_x))
    train = nn.functional.normalize(train_x.float(), dim=1)
    test = nn.functional.normalize(test_x.float(), dim=1)
    correct = 0
    for i in range(0, len(test), chunk):
        sim = test[i : i + chunk] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, train_y[top_idx].long(), (top_sim / temperature).exp())
        correct += int((votes.argmax(1) == test_y[i : i + chunk]).sum())
    return 100.0 * correct / len(test)


def evaluate_encoder(
    encoder: nn.Module, train, test, *, frames: int, batch_size: int = 256, device=None,
    probe: ProbeConfig | None = None, on_epoch: Callable[[dict], None] | None = None,
    normalize: bool = True,
) -> dict:
    """Linear probe and kNN of a frozen encoder: train on ``train``, report on ``test`` (SkeletonArrays).

    ``normalize``: centre every sequence on its layout's centre joint first, as pretraining does
    (an encoder pretrained on centred views never saw raw camera coordinates).
    """
    from skelcl.layouts import get_layout

    probe = probe or ProbeConfig()
    for part, part_data in (("training", train), ("test", test)):
        if len(part_data) == 0:
            raise ValueError(f"the {part} set is empty: nothing to evaluate the encoder on")
    num_classes = int(max(train.num_classes or 0, test.num_classes or 0,
                          int(train.y.max()) + 1, int(test.y.max()) + 1))
    center = get_layout(train.layout).center if normalize else None
    start = time.perf_counter()
    kw = dict(frames=frames, batch_size=batch_size, device=device, center_joint=center)
    tr_x, tr_y = extract_features(encoder, train, **kw)
    te_x, te_y = extract_features(encoder, test, **kw)
    extract_s = time.perf_counter() - start
    if not (torch.isfinite(tr_x).all() and torch.isfinite(te_x).all()):
        raise ValueError("the encoder produced non-finite features")
    result = linear_probe(tr_x, tr_y, te_x, te_y, num_classes, probe, on_epoch=on_epoch)
    result["knn_top1"] = knn_top1(tr_x, tr_y, te_x, te_y, num_classes, k=probe.knn_k,
                                  temperature=probe.knn_temperature)
    result.update(feature_dim=int(tr_x.shape[1]), train_samples=len(tr_x), test_samples=len(te_x),
                  feature_seconds=extract_s, eval_seconds=time.perf_counter() - start)
    return result


def random_encoder(spec: dict, layout: str, seed: int) -> nn.Module:
    """A freshly initialised encoder of the same architecture (the baseline pretraining must beat)."""
    from skelcl.models import build_encoder

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build_encoder(spec["name"], layout=layout, **spec.get("kwargs", {}))
    finally:
        torch.random.set_rng_state(state)


def encoder_from_checkpoint(state: dict) -> nn.Module:
    """The pretrained encoder stored in a checkpoint written by skelcl.train."""
    from skelcl.models import build_encoder

    for key in ("encoder", "encoder_spec", "config"):
        if key not in state:
            raise ValueError(f"checkpoint has no {key!r} entry: was it written by skelcl.train?")
    spec = state["encoder_spec"]
    encoder = build_encoder(spec["name"], layout=state["layout"], **spec.get("kwargs", {}))
    encoder.load_state_dict(state["encoder"])
    return encoder


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m skelcl.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by skelcl.train")
    p.add_argument("--data", default=None, help="'synthetic' or a path (default: the data it was trained on)")
    p.add_argument("--benchmark", default=None,
                   help="split name, e.g. xview, xsub60, given, fold1 (default: the one it was trained on)")
    p.add_argument("--layout", default=None, help="joint layout of --data (default: from the data)")
    p.add_argument("--epochs", type=int, default=100, help="linear-probe epochs")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch size")
    p.add_argument("--no-random-init", action="store_true", help="skip the random-init encoder baseline")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the results to this JSON file")
    return p.parse_args(argv)


def _check_out_file(path: str) -> None:
    """Fail before the probes run, not after, when the results could not be written."""
    if os.path.isdir(path):
        raise ValueError(f"--out {path!r} is a directory; give a file name for the JSON results")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path!r}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {path!r}: directory {parent!r} is not writable")


def main(argv=None) -> dict:
    args = _parse(argv)
    if args.out:
        _check_out_file(args.out)
    state = load_checkpoint(args.checkpoint)
    cfg = state["config"]
    from skelcl.data import load_dataset
    from skelcl.data.splits import split_train_test

    data_spec = args.data or cfg["data"]
    synthetic = cfg.get("synthetic") if data_spec == "synthetic" else None
    data = load_dataset(data_spec, layout=args.layout or (cfg.get("layout") if args.data is None else None),
                        synthetic_kwargs=synthetic)
    benchmark = args.benchmark or cfg["benchmark"]
    train, test = split_train_test(data, benchmark)  # the check training makes: both parts non-empty
    probe = ProbeConfig(epochs=args.epochs, optimizer=args.optimizer, lr=args.lr, knn_k=args.knn_k,
                        seed=cfg.get("seed", 0))
    device = resolve_device(args.device)
    encoder = encoder_from_checkpoint(state).to(device)
    kw = dict(frames=cfg["frames"], batch_size=args.batch_size, device=device, probe=probe)
    result = {"checkpoint": args.checkpoint, "data": data_spec, "benchmark": benchmark,
              "step": state.get("step")}
    result.update(evaluate_encoder(encoder, train, test, **kw))
    if not args.no_random_init:
        base = random_encoder(state["encoder_spec"], data.layout, cfg.get("seed", 0)).to(device)
        r = evaluate_encoder(base, train, test, **kw)
        result.update(random_init_linear_top1=r["linear_top1"], random_init_knn_top1=r["knn_top1"],
                      random_init_linear_best_epoch_top1=r["linear_best_epoch_top1"])
    base_lin = base_knn = ""
    if not args.no_random_init:
        base_lin = f"   random-init encoder: {result['random_init_linear_top1']:.2f}%"
        base_knn = f"   random-init encoder: {result['random_init_knn_top1']:.2f}%"
    print(f"linear top-1 (final probe epoch) on {benchmark} test: {result['linear_top1']:.2f}%{base_lin}")
    print(f"kNN top-1 (k={probe.knn_k}): {result['knn_top1']:.2f}%{base_knn}")
    print(f"best probe epoch top-1 (chosen on test, optimistic): {result['linear_best_epoch_top1']:.2f}% "
          f"at epoch {result['linear_best_epoch']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
