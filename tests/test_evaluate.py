"""Linear probe, kNN and the evaluation entry points (skelcl.evaluate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skelcl.evaluate import ProbeConfig, knn_top1, linear_probe


def _clusters(n_per_class, num_classes, dim, spread, gen):
    """Gaussian clusters around random centres: linearly separable when ``spread`` is small."""
    centres = torch.randn(num_classes, dim, generator=gen, dtype=torch.float64) * 3
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=gen, dtype=torch.float64)
    # a large offset and scale per feature: the probe must standardise to cope with them
    x = x * torch.linspace(0.01, 100, dim, dtype=torch.float64) + 1e3
    return x, y


def _knn_brute_force(train_x, train_y, test_x, test_y, num_classes, k, t):
    """float64 NumPy kNN, one test sample at a time: the obvious version to compare against."""
    tr = train_x.numpy().astype(np.float64)
    te = test_x.numpy().astype(np.float64)
    tr /= np.linalg.norm(tr, axis=1, keepdims=True)
    te /= np.linalg.norm(te, axis=1, keepdims=True)
    correct = 0
    for i in range(len(te)):
        sim = tr @ te[i]
        nearest = np.argsort(-sim, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[int(train_y[j])] += np.exp(sim[j] / t)
        correct += int(np.argmax(votes) == int(test_y[i]))
    return 100.0 * correct / len(te)


def test_linear_probe_separable_features_reach_high_accuracy(rng):
    x, y = _clusters(40, 5, 12, 0.3, rng)
    order = torch.randperm(len(y), generator=rng)
    x, y = x[order], y[order]
    tr, te = slice(0, 150), slice(150, None)
    epochs = []
    res = linear_probe(x[tr].float(), y[tr], x[te].float(), y[te], 5, ProbeConfig(epochs=100),
                       on_epoch=epochs.append)
    assert res["linear_top1"] >= 95.0
    assert len(epochs) == 100 and epochs[-1]["test_top1"] == res["linear_top1"]
    assert res["linear_best_epoch_top1"] == max(e["test_top1"] for e in epochs)
    assert 1 <= res["linear_best_epoch"] <= 100


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_linear_probe_random_labels_stay_near_chance(rng, optimizer):
    x = torch.randn(301, 7, generator=rng)
    y = torch.randint(0, 4, (301,), generator=rng)
    res = linear_probe(x[:200], y[:200], x[200:], y[200:], 4, ProbeConfig(epochs=20, optimizer=optimizer))
    assert res["linear_top1"] < 50.0  # chance is 25 %; the features carry no label information


def test_linear_probe_is_deterministic_and_leaves_global_rng_alone(rng):
    x, y = _clusters(10, 3, 5, 1.0, rng)
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a = linear_probe(x.float(), y, x.float(), y, 3, ProbeConfig(epochs=5, seed=3))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = linear_probe(x.float(), y, x.float(), y, 3, ProbeConfig(epochs=5, seed=3))
    assert a == b


@pytest.mark.parametrize("k", [1, 5, 20, 1000])
def test_knn_matches_brute_force(rng, k):
    train_x = torch.randn(97, 6, generator=rng)
    train_y = torch.randint(0, 5, (97,), generator=rng)
    test_x = torch.randn(33, 6, generator=rng)
    test_y = torch.randint(0, 5, (33,), generator=rng)
    got = knn_top1(train_x, train_y, test_x, test_y, 5, k=k, temperature=0.1, chunk=8)
    want = _knn_brute_force(train_x, train_y, test_x, test_y, 5, min(k, 97), 0.1)
    assert got == pytest.approx(want)


def test_knn_on_clusters_is_accurate(rng):
    x, y = _clusters(30, 4, 8, 0.2, rng)
    x = x - x.mean(0)  # cosine similarity needs centred clusters
    assert knn_top1(x[::2].float(), y[::2], x[1::2].float(), y[1::2], 4, k=5) >= 95.0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"optimizer": "lbfgs"}, "optimizer"), ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"),
     ({"knn_k": 0}, "knn_k")],
)
def test_probe_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProbeConfig(**kwargs)


def test_probe_rejects_bad_shapes(rng):
    x = torch.randn(10, 3, generator=rng)
    y = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="train_x and test_x"):
        linear_probe(x, y, torch.randn(10, 4), y, 2)
    with pytest.raises(ValueError, match="same number of rows"):
        linear_probe(x, y[:5], x, y, 2)
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe(x, y, x, y, 1)
    with pytest.raises(ValueError, match="k must be"):
        knn_top1(x, y, x, y, 2, k=0)


@pytest.mark.parametrize("where, match", [("dir", "is a directory"), ("missing", "does not exist")])
def test_cli_rejects_unwritable_out_before_evaluating(tmp_path, where, match):
    from skelcl.evaluate import main

    out = str(tmp_path) if where == "dir" else str(tmp_path / "no" / "such" / "r.json")
    # The checkpoint does not exist either: the --out check must come first, before any loading.
    with pytest.raises(ValueError, match=match):
        main(["--checkpoint", str(tmp_path / "absent.pt"), "--out", out])
