"""The view/distance augmentation as one torch op with three backends.

``view_augment`` applies one virtual camera per sequence (or per frame) and equals
``skelcl.reference.view_transform``; ``two_views`` draws two cameras from a sampler on x's device
and writes both views in one pass over x (one kernel launch on GPU).

Backends, all behind torch.library ops so they compose with autograd and torch.compile:

* ``"triton"``: ``skelcl::view_augment_triton`` (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).
* ``"cpu"``: ``skelcl::view_augment``, the OpenMP kernel in ``csrc/augment.cpp``, with a fake
  implementation so ``torch.compile(fullgraph=True)`` traces through it. If it cannot be built the
  reference is used after one warning.
* ``"torch"``: the float64-capable reference.

``"auto"`` picks triton for CUDA tensors and cpu for CPU tensors. Arithmetic is float32 (float64 for
float64 x); the result has x's dtype. The gradient flows to x only: angles and shift are constants.

The rotation is ``R = Rx(alpha) Ry(beta) Rz(gamma)`` with the matrices of the project's design notes.
The paper's printed Eq. 3 labels its z-axis matrix "y"; the matrices implemented here are the
intended ones (each factor rotates about the axis it is named after).
"""

from __future__ import annotations

import operator
import os

import torch
from torch import Tensor

from skelcl import reference
from skelcl.kernels import capturing
from skelcl.views import ViewSampler, get_sampler

__all__ = ["view_augment", "two_views"]

_BACKENDS = ("auto", "triton", "cpu", "torch")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------
# Validation


def _check_x(x) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"x must be (N, C=3, T, V, M), got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")


def _check_center_joint(center_joint, n_joints: int) -> int:
    """center_joint as a Python int (NumPy integers are accepted; bools and floats are not)."""
    if isinstance(center_joint, bool) or not hasattr(type(center_joint), "__index__"):
        raise ValueError(f"center_joint must be an int, got {type(center_joint).__name__}")
    center_joint = operator.index(center_joint)
    if not 0 <= center_joint < n_joints:
        raise ValueError(f"center_joint={center_joint} is out of range for V={n_joints} joints")
    return center_joint


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_params(x: Tensor, angles, shift, per_frame: bool) -> tuple[Tensor, Tensor]:
    """Checks shapes and finiteness; returns angles, shift as (1, N, 1 or T, 3) in the arithmetic dtype."""
    n_seq, _, n_frames = x.shape[:3]
    want = (n_seq, n_frames, 3) if per_frame else (n_seq, 3)
    for name, value, allowed in (
        ("angles", angles, {want}),
        ("shift", shift, {want, (n_seq, 3)}),
    ):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if tuple(value.shape) not in allowed:
            shapes = " or ".join(map(str, sorted(allowed)))
            raise ValueError(f"{name} must have shape {shapes} for x of shape {tuple(x.shape)} "
                             f"(per_frame={per_frame}), got {tuple(value.shape)}")
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{name} must be a real tensor, got {value.dtype}")
        # One small reduction (and a host sync on GPU); skipped while torch.compile traces and while
        # a CUDA graph is captured (nothing can be read back then).
        skip = torch.compiler.is_compiling() or capturing(value)
        if not skip and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or Inf")
    acc = _acc_dtype(x)
    a = angles.detach().to(device=x.device, dtype=acc)
    s = shift.detach().to(device=x.device, dtype=acc)
    frames = lambda p: n_frames if p.dim() == 3 else 1
    return a.reshape(1, n_seq, frames(a), 3), s.reshape(1, n_seq, frames(s), 3)


def _resolve_backend(x: Tensor, backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if x.is_cuda else "cpu"
    if backend == "cpu" and x.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs x on the CPU, got x on {x.device}")
    if backend == "triton" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' needs x on a CUDA device (or TRITON_INTERPRET=1 for CPU tensors)")
    return backend


# ---------------------------------------------------------------------------------------------
# Backward, shared by both registered ops: the view is linear in x except through the centre.


def _view_backward(x: Tensor, angles: Tensor, center_joint: int, grad: Tensor) -> Tensor:
    """d(views)/dx applied to ``grad`` (K, N, 3, T, V, M) -> (N, 3, T, V, M).

    y = keep * R (x - c - d), c = x at (person 0, centre joint, first present frame):
    dx = keep * R^T g, and the centre receives minus the sum of that over every present slot.
    """
    acc = _acc_dtype(x)
    rot = reference.rotation_matrix(angles.to(acc))  # (K, N, Ta, 3, 3)
    gv = torch.einsum("kntji,knjtvm->nitvm", rot, grad.to(acc))
    present = reference.present_mask(x)  # (N, T, M)
    gv = gv * present[:, None, :, None, :].to(acc)
    present0 = present[:, :, 0]
    first = present0.to(torch.uint8).argmax(dim=1)
    has_centre = present0.any(dim=1, keepdim=True).to(acc)
    rows = torch.arange(x.shape[0], device=x.device)
    dc = -gv.sum(dim=(2, 3, 4)) * has_centre  # (N, 3)
    gx = gv.clone()
    gx[rows, :, first, center_joint, 0] += dc
    return gx.to(x.dtype)


def _setup_context(ctx, inputs, output):
    x, angles, _shift, center_joint = inputs
    ctx.save_for_backward(x, angles)
    ctx.center_joint = center_joint


def _backward(ctx, grad):
    x, angles = ctx.saved_tensors
    gx = _view_backward(x, angles, ctx.center_joint, grad) if ctx.needs_input_grad[0] else None
    return gx, None, None, None


def _fake(x, angles, shift, center_joint):
    n_seq, _, n_frames, n_joints, n_persons = x.shape
    return x.new_empty((angles.shape[0], n_seq, 3, n_frames, n_joints, n_persons))


# ---------------------------------------------------------------------------------------------
# Op registration (lazy: nothing is built or imported until a backend is first used)

_REGISTERED: dict[str, object] = {}


# Building or defining an op is not traceable: while torch.compile traces a first call, dynamo runs
# these two eagerly and keeps their answer as a constant (afterwards they are dictionary lookups).
@torch._dynamo.assume_constant_result
def _load_cpu_op() -> bool:
    """Build (or load) the C++ op once and register its fake and backward; False when it cannot be built."""
    if "cpu" not in _REGISTERED:
        from skelcl._cpp import load_extension

        ok = load_extension("skelcl_augment", ("augment.cpp",)) is not None
        if ok:
            torch.library.register_fake("skelcl::view_augment")(_fake)
            torch.library.register_autograd("skelcl::view_augment", _backward, setup_context=_setup_context)
        _REGISTERED["cpu"] = ok
    return bool(_REGISTERED["cpu"])


@torch._dynamo.assume_constant_result
def _define_triton_op() -> bool:
    """Define torch.ops.skelcl.view_augment_triton once (it imports triton)."""
    if "triton" not in _REGISTERED:
        from skelcl.kernels.augment import view_augment_triton

        @torch.library.triton_op("skelcl::view_augment_triton", mutates_args=())
        def view_augment_triton_op(x: Tensor, angles: Tensor, shift: Tensor, center_joint: int) -> Tensor:
            return view_augment_triton(x, angles, shift, center_joint, wrap=torch.library.wrap_triton)

        view_augment_triton_op.register_autograd(_backward, setup_context=_setup_context)
        _REGISTERED["triton"] = True
    return True


def _cpu_op():
    """torch.ops.skelcl.view_augment, or None when the C++ extension cannot be built."""
    return torch.ops.skelcl.view_augment.default if _load_cpu_op() else None


def _triton_op():
    """torch.ops.skelcl.view_augment_triton, defined on first use."""
    _define_triton_op()
    return torch.ops.skelcl.view_augment_triton.default


def _views(x: Tensor, angles: Tensor, shift: Tensor, center_joint: int, backend: str) -> Tensor:
    """(K, N, 3, T, V, M) views of x; angles and shift are (K, N, 1 or T, 3) in the arithmetic dtype."""
    op = None
    if backend == "triton":
        op = _triton_op()
        if not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and x.requires_grad):
            # Nothing to record for autograd or a compiler: launch the kernel straight away and
            # skip the dispatcher, whose overhead is comparable to the kernel itself on a GPU.
            from skelcl.kernels.augment import view_augment_triton

            return view_augment_triton(x, angles, shift, center_joint)
    elif backend == "cpu":
        op = _cpu_op()  # None after a failed build: the reference below, already warned about
    if op is not None:
        return op(x, angles, shift, center_joint)
    acc = _acc_dtype(x)
    xa = x.to(acc)
    n_frames = x.shape[2]
    views = []
    for k in range(angles.shape[0]):
        per_frame = angles.shape[2] != 1 or shift.shape[2] != 1  # (a T of 1 or 0 is per frame too)
        a = angles[k].expand(-1, n_frames, -1) if per_frame else angles[k, :, 0]
        s = shift[k] if shift.shape[2] != 1 else shift[k, :, 0]
        views.append(reference.view_transform(xa, a, s, center_joint=center_joint, per_frame=per_frame))
    return torch.stack(views).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Public API


def view_augment(
    x: Tensor,
    angles: Tensor,
    shift: Tensor,
    *,
    center_joint: int = 1,
    per_frame: bool = False,
    backend: str = "auto",
) -> Tensor:
    """One virtual camera per sequence (or per frame): centre, then ``v' = R (v - d)``.

    x: (N, 3, T, V, M) float16/bfloat16/float32/float64, any strides. angles: (N, 3) radians, or
    (N, T, 3) with ``per_frame=True``. shift: (N, 3), or (N, T, 3) with ``per_frame=True``.
    The centre is person 0's ``center_joint`` at the first frame where person 0 is present (no
    centring when person 0 is absent from every frame); absent (all-zero) slots stay exactly zero.
    Returns (N, 3, T, V, M) in x's dtype.
    """
    _check_x(x)
    center_joint = _check_center_joint(center_joint, x.shape[3])
    a, s = _check_params(x, angles, shift, bool(per_frame))
    return _views(x, a, s, center_joint, _resolve_backend(x, backend))[0]


def two_views(
    x: Tensor,
    sampler: ViewSampler | str,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    center_joint: int = 1,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Two random views of every sequence of x, for a contrastive positive pair.

    The cameras are drawn from ``sampler`` (a ViewSampler or a preset name, see ``skelcl.views``) on
    x's device, with ``generator`` or a fresh generator seeded with ``seed``, as one draw of 2N
    cameras (the first N for x1); then one kernel reads x once and writes both views.
    Returns ``(x1, x2)``, each (N, 3, T, V, M) in x's dtype.
    """
    _check_x(x)
    center_joint = _check_center_joint(center_joint, x.shape[3])
    sampler = get_sampler(sampler)
    if generator is not None and seed is not None:
        raise ValueError("give either generator or seed, not both")
    if generator is None and seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, x on {x.device}: they must match")
    backend = _resolve_backend(x, backend)
    if x.numel() == 0:  # nothing to view (and no frame count to draw frame-level cameras for)
        empty = x.unsqueeze(0).expand(2, *x.shape).clone()
        return empty[0], empty[1]
    n_seq, _, n_frames = x.shape[:3]
    # Both cameras in one draw of 2N: rows [0, N) are view 1, rows [N, 2N) view 2.
    angles, shift = sampler.sample(2 * n_seq, n_frames, device=x.device, generator=generator)
    acc = _acc_dtype(x)
    per_frame = n_frames if sampler.frame_level else 1
    angles = angles.to(acc).reshape(2, n_seq, per_frame, 3)
    shift = shift.to(acc).reshape(2, n_seq, per_frame, 3)
    views = _views(x, angles, shift, center_joint, backend)
    return views[0], views[1]
