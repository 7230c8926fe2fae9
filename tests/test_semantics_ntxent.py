"""ntxent_loss against an independent float64 implementation of the design notes' NT-Xent.

``l(i, j) = -log(exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau))``, cosine similarity, positives at
i +- N, mean over the 2N anchors. Written with explicit loops in NumPy for the value and with central
finite differences of that NumPy function for the gradient (no torch autograd, no cross_entropy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skelcl.ops import ntxent_loss


def np_ntxent(z1, z2, tau):
    z = np.concatenate([z1, z2]).astype(np.float64)
    two_n = z.shape[0]
    n = two_n // 2
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for i in range(two_n):
        j = (i + n) % two_n
        sims = np.array([z[i] @ z[k] / tau for k in range(two_n)])
        others = np.delete(sims, i)  # every k != i, the positive included
        top = others.max()
        log_denom = top + math.log(np.exp(others - top).sum())
        total += -(sims[j] - log_denom)
    return total / two_n


def np_grad(z1, z2, tau, h=1e-6):
    grads = []
    for which in (0, 1):
        base = [z1.copy(), z2.copy()]
        g = np.zeros_like(base[which])
        for idx in np.ndindex(g.shape):
            plus = [b.copy() for b in base]
            minus = [b.copy() for b in base]
            plus[which][idx] += h
            minus[which][idx] -= h
            g[idx] = (np_ntxent(*plus, tau) - np_ntxent(*minus, tau)) / (2 * h)
        grads.append(g)
    return grads


def _run(z1, z2, tau, dtype, **kw):
    a = torch.from_numpy(z1).to(dtype).requires_grad_()
    b = torch.from_numpy(z2).to(dtype).requires_grad_()
    loss = ntxent_loss(a, b, tau, **kw)
    loss.backward()
    return loss.item(), a.grad.double().numpy(), b.grad.double().numpy()


def test_hand_value_two_pairs():
    """N = 2, D = 2, tau = 1: rows e1, e2 | e1, -e2; every similarity is known exactly."""
    z1 = np.array([[1.0, 0.0], [0.0, 2.0]])
    z2 = np.array([[3.0, 0.0], [0.0, -1.0]])
    # anchor 0 (e1): positive e1 (s=1); others e2 (0), -e2 (0)  -> -(1 - log(e + 2))
    # anchor 1 (e2): positive -e2 (-1); others e1 (0), e1 (0)    -> -(-1 - log(e^-1 + 2))
    # anchors 2, 3 mirror 0, 1.
    want = (2 * (math.log(math.e + 2) - 1) + 2 * (math.log(math.exp(-1) + 2) + 1)) / 4
    assert abs(np_ntxent(z1, z2, 1.0) - want) < 1e-14
    for backend in ("torch", "cpu"):
        got, _, _ = _run(z1, z2, 1.0, torch.float64, backend=backend)
        assert abs(got - want) < 1e-12, backend


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("n,d,tau", [(1, 3, 0.5), (3, 4, 0.1), (5, 7, 0.07), (6, 2, 1.3)])
def test_matches_numpy_float64(backend, n, d, tau):
    rng = np.random.default_rng(100 * n + d)
    z1 = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))  # rows of different norms
    z2 = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))
    want = np_ntxent(z1, z2, tau)
    g1, g2 = np_grad(z1, z2, tau)
    got, a, b = _run(z1, z2, tau, torch.float64, backend=backend)
    assert abs(got - want) <= 1e-12 * max(1.0, abs(want))
    scale = max(np.abs(g1).max(), np.abs(g2).max())
    np.testing.assert_allclose(a, g1, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(b, g2, rtol=0, atol=1e-6 * scale)
    # float32 inputs on the same numbers
    z1f, z2f = z1.astype(np.float32).astype(np.float64), z2.astype(np.float32).astype(np.float64)
    want_f = np_ntxent(z1f, z2f, tau)
    got_f, _, _ = _run(z1f, z2f, tau, torch.float32, backend=backend)
    assert abs(got_f - want_f) <= 1e-5 * max(1.0, abs(want_f))


def test_n_one_has_zero_loss():
    """With one pair, the positive is the only other row: the loss is exactly log(1) = 0."""
    z1, z2 = np.array([[1.0, 2.0, -1.0]]), np.array([[0.5, -3.0, 2.0]])
    for backend in ("torch", "cpu"):
        got, a, b = _run(z1, z2, 0.2, torch.float64, backend=backend)
        assert abs(got) < 1e-14 and np.abs(a).max() < 1e-12 and np.abs(b).max() < 1e-12


def test_default_temperature_is_point_one():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    got = ntxent_loss(torch.from_numpy(z1), torch.from_numpy(z2), backend="cpu").item()
    assert abs(got - np_ntxent(z1, z2, 0.1)) < 1e-12


def test_half_of_the_two_direction_sum():
    """Design notes: mean over 2N anchors, i.e. half of the sum of the two directions' means."""
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    got = ntxent_loss(torch.from_numpy(z1), torch.from_numpy(z2), 0.3, backend="cpu").item()
    assert abs(2 * got - (np_ntxent(z1, z2, 0.3) + np_ntxent(z2, z1, 0.3))) < 1e-12


@pytest.mark.triton
def test_triton_matches_numpy(triton_device):
    """Tiny sizes: the interpreter is slow. Exact float32 products (allow_tf32=False)."""
    rng = np.random.default_rng(5)
    n, d, tau = 5, 6, 0.2
    z1 = rng.normal(size=(n, d)).astype(np.float32).astype(np.float64)
    z2 = rng.normal(size=(n, d)).astype(np.float32).astype(np.float64)
    want = np_ntxent(z1, z2, tau)
    g1, g2 = np_grad(z1, z2, tau)
    a = torch.from_numpy(z1).float().to(triton_device).requires_grad_()
    b = torch.from_numpy(z2).float().to(triton_device).requires_grad_()
    loss = ntxent_loss(a, b, tau, backend="triton", allow_tf32=False)
    loss.backward()
    assert abs(loss.item() - want) <= 2e-6 * max(1.0, abs(want))
    scale = max(np.abs(g1).max(), np.abs(g2).max())
    np.testing.assert_allclose(a.grad.cpu().double().numpy(), g1, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(b.grad.cpu().double().numpy(), g2, rtol=0, atol=1e-4 * scale)


def test_reference_function_directly():
    from skelcl import reference

    rng = np.random.default_rng(9)
    z1, z2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    got = reference.ntxent_loss(torch.from_numpy(z1), torch.from_numpy(z2), 0.25).item()
    assert abs(got - np_ntxent(z1, z2, 0.25)) < 1e-12
