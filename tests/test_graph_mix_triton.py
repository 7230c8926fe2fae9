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


def test_launchers_take_strided_inputs_and_refuse_other_dtypes(triton_device, rng):
    """The raw launchers (public to other pipelines) read dense rows: a transposed or sliced x gives
    the same result as its contiguous copy, and integer activations are refused, not misread."""
    from skelcl.kernels.graph_mix import graph_mix, graph_mix_val_grad

    csr, pattern = _random_csr(6, 5, rng)
    dense = torch.randn(6, 5, generator=rng) * pattern
    val = dense[csr.rows, csr.cols].to(triton_device)
    idx = [t.to(triton_device) for t in (csr.rowptr, csr.cols, csr.rows)]
    x = torch.randn(3, 9, 5, generator=rng).to(triton_device).transpose(1, 2)  # (3, 5, 9), strided
    g = torch.randn(3, 6, 18, generator=rng).to(triton_device)[:, :, ::2]  # (3, 6, 9), strided
    torch.testing.assert_close(graph_mix(x, idx[0], idx[1], val),
                               graph_mix(x.contiguous(), idx[0], idx[1], val))
    torch.testing.assert_close(graph_mix_val_grad(g, x, idx[2], idx[1]),
                               graph_mix_val_grad(g.contiguous(), x.contiguous(), idx[2], idx[1]))
    with pytest.raises(ValueError, match="activations"):
        graph_mix(x.to(torch.int32), idx[0], idx[1], val)
    with pytest.raises(ValueError, match="out must be a contiguous"):
        graph_mix(x, idx[0], idx[1], val, out=torch.empty(3, 9, 6, device=triton_device).transpose(1, 2))


def test_support_pattern_cache_follows_the_support_tensor(rng, monkeypatch):
    """GraphConv's cached pattern is rebuilt for another view of the same memory and for a new
    support tensor, and a module that has cached one still pickles (the cache is dropped)."""
    import pickle

    gc = stgcn_module.GraphConv(2, 3, 3)
    partitions = get_layout("ntu25").adjacency_partitions()
    first = gc._support_csr(partitions, 3, 25, 25)
    assert gc._support_csr(partitions, 3, 25, 25) is first  # cached
    flipped = partitions.transpose(1, 2)  # same data_ptr, version and shape; another pattern
    want = stgcn_module._Csr.of((flipped != 0).transpose(1, 2).reshape(75, 25))
    got = gc._support_csr(flipped, 3, 25, 25)
    assert torch.equal(got.cols, want.cols) and torch.equal(got.rowptr, want.rowptr)
    other = partitions.clone()
    other[0, 3, 4] = 1.0
    assert gc._support_csr(other, 3, 25, 25).cols.numel() == first.cols.numel() + 1
    restored = pickle.loads(pickle.dumps(gc))
    assert not hasattr(restored, "_csr_cache") and torch.equal(restored.weight, gc.weight)
