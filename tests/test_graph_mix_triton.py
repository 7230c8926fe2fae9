"""Sparse joint mixing, Triton kernels (kernels/graph_mix.py), against float64 dense products;
on CPU tensors through the Triton interpreter, on CUDA when present."""

from __future__ import annotations

import pytest
import torch

import skelcl.models.stgcn as stgcn_module
from skelcl.layouts import get_layout

pytestmark = pytest.mark.triton


def _random_csr(rows: int, cols: int, gen: torch.Generator):
    """A sparse (rows, cols) pattern with empty rows, single entries and full rows."""
    pattern = torch.rand(rows, cols, generator=gen) < 0.3
    pattern[0] = False  # an empty row
    pattern[-1] = True  # a full row
    return stgcn_module._Csr.of(pattern), pattern


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("b, length", [(3, 37), (2, 1), (67, 3)])  # 67: a partial last block
def test_mix_and_value_gradient_match_dense(triton_device, rng, dtype, tol, b, length):
    from skelcl.kernels.graph_mix import graph_mix, graph_mix_val_grad

    rows, cols = 7, 5
    csr, pattern = _random_csr(rows, cols, rng)
    dense = torch.randn(rows, cols, generator=rng, dtype=torch.float64) * pattern
    x = torch.randn(b, cols, length, generator=rng, dtype=torch.float64)
    g = torch.randn(b, rows, length, generator=rng, dtype=torch.float64)
    dev = lambda t: t.to(triton_device)  # noqa: E731
    val = dense[csr.rows, csr.cols]

    out = graph_mix(dev(x.to(dtype)), dev(csr.rowptr), dev(csr.cols), dev(val.to(dtype)))
    assert out.dtype == dtype and out.shape == (b, rows, length)
    torch.testing.assert_close(out.double().cpu(), dense @ x, rtol=tol, atol=tol)

    out_t = torch.full((b, cols, length), float("nan"), dtype=dtype, device=triton_device)  # poisoned
    graph_mix(dev(g.to(dtype)), dev(csr.t_rowptr), dev(csr.t_col), dev(val[csr.by_col].to(dtype)), out=out_t)
    torch.testing.assert_close(out_t.double().cpu(), dense.t() @ g, rtol=tol, atol=tol)

    grad_val = graph_mix_val_grad(dev(g.to(dtype)), dev(x.to(dtype)), dev(csr.rows), dev(csr.cols))
    want = (g @ x.transpose(1, 2)).sum(0)[csr.rows, csr.cols]
    torch.testing.assert_close(grad_val.double().cpu(), want, rtol=tol, atol=tol * length)


def test_graph_conv_with_triton_mixing_matches_dense(triton_device, rng, monkeypatch):
    """GraphConv's portable path (the one CUDA takes) with the sparse Triton mixing against the dense
    batched product: outputs and gradients, including for edge importances that are exactly zero."""
    monkeypatch.setattr(stgcn_module, "_cpu", lambda x: False)
    monkeypatch.setattr(stgcn_module, "_cpu_fast_path", lambda x: False)
    torch.manual_seed(0)
    gc = stgcn_module.GraphConv(6, 5, 3).to(triton_device)
    partitions = get_layout("ntu25").adjacency_partitions().to(triton_device)
    importance = 0.5 + torch.rand(3, 25, 25, generator=rng).to(triton_device)
    importance[1, 1, 20] = 0.0
    importance.requires_grad_()
    x = torch.randn(2, 25, 3, 6, generator=rng).to(triton_device).requires_grad_()
    g = torch.randn(2, 25, 3, 5, generator=rng).to(triton_device)
    results = []
    for sparse in (True, False):
        monkeypatch.setattr(stgcn_module, "PORTABLE_MIX", "sparse" if sparse else "bmm")
        out = gc(x, partitions * importance, partitions)
        results.append((out, *torch.autograd.grad(out, (x, importance, gc.weight, gc.bias), g)))
    assert gc._csr_cache is not None  # the sparse path ran
    for sparse_t, dense_t in zip(*results):
        torch.testing.assert_close(sparse_t, dense_t, rtol=1e-4, atol=1e-5)
    assert results[0][2][1, 1, 20] != 0
