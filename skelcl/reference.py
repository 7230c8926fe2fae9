"""Plain-PyTorch ground truth for every fused op in skelcl.

Short, readable and dtype-generic (float64 works): the kernels are tested against these
functions and the benchmarks use them as the baseline. Nothing here is optimised.

Conventions (see README, "The method"):

* ``x`` has layout ``(N, C=3, T, V, M)``: batch, xyz, frames, joints, persons.
* A ``(frame, person)`` slot whose joints are all exactly zero is padding and stays zero.
* ``R = Rx(alpha) @ Ry(beta) @ Rz(gamma)`` with *passive* (coordinate-system) rotations, and a
  view is ``v' = R (v - d)`` applied after centring on the body centre of the first frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "rotation_matrix",
    "present_mask",
    "body_center",
    "view_transform",
    "ntxent_loss",
    "LARSReference",
]


def rotation_matrix(angles: Tensor) -> Tensor:
    """(..., 3) angles in radians ``(alpha, beta, gamma)`` -> (..., 3, 3) ``Rx(alpha) Ry(beta) Rz(gamma)``.

    Each factor rotates the coordinate system anticlockwise about its axis, so a point keeps its
    place in space and its coordinates change: ``Rz(90 deg) @ (1, 0, 0) = (0, -1, 0)``.
    """
    if angles.shape[-1] != 3:
        raise ValueError(f"angles must have a last dimension of 3, got shape {tuple(angles.shape)}")
    a, b, g = angles.unbind(-1)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()

    def mat(rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = mat([(one, zero, zero), (zero, ca, sa), (zero, -sa, ca)])
    ry = mat([(cb, zero, -sb), (zero, one, zero), (sb, zero, cb)])
    rz = mat([(cg, sg, zero), (-sg, cg, zero), (zero, zero, one)])
    return rx @ ry @ rz


def present_mask(x: Tensor) -> Tensor:
    """(N, 3, T, V, M) -> bool (N, T, M): True where the (frame, person) slot has any non-zero joint."""
    return (x != 0).any(dim=3).any(dim=1)


def body_center(x: Tensor, center_joint: int) -> Tensor:
    """(N, 3, T, V, M) -> (N, 3): person 0's ``center_joint`` at the first frame where person 0 is present.

    A sequence in which person 0 never appears has no reference point: its centre is zero.
    """
    if x.shape[2] == 0 or x.shape[4] == 0:  # no frame or no person slot: nothing to centre on
        return x.new_zeros(x.shape[0], 3)
    present0 = present_mask(x)[:, :, 0]  # (N, T)
    first = present0.to(torch.uint8).argmax(dim=1)  # first True, or 0 when none
    n = torch.arange(x.shape[0], device=x.device)
    center = x[n, :, first, center_joint, 0]  # (N, 3)
    return center * present0.any(dim=1, keepdim=True).to(x.dtype)


def view_transform(
    x: Tensor, angles: Tensor, shift: Tensor, *, center_joint: int = 1, per_frame: bool = False
) -> Tensor:
    """The paper's view/distance transform: centre, then ``v' = R (v - d)`` for every present joint.

    x: (N, 3, T, V, M). angles, shift: (N, 3) for one camera per sequence; with ``per_frame=True``
    angles is (N, T, 3) and shift is (N, 3) or (N, T, 3). Absent slots are returned exactly zero.
    """
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"x must be (N, 3, T, V, M), got shape {tuple(x.shape)}")
    n_seq, _, n_frames, n_joints, _ = x.shape
    if not 0 <= center_joint < n_joints:
        raise ValueError(f"center_joint={center_joint} is out of range for V={n_joints}")
    want = (n_seq, n_frames, 3) if per_frame else (n_seq, 3)
    if tuple(angles.shape) != want:
        raise ValueError(f"angles must have shape {want}, got {tuple(angles.shape)}")
    if tuple(shift.shape) not in {want, (n_seq, 3)}:
        raise ValueError(f"shift must have shape {want} or {(n_seq, 3)}, got {tuple(shift.shape)}")

    rot = rotation_matrix(angles.to(x.dtype))  # (N, 3, 3) or (N, T, 3, 3)
    if not per_frame:
        rot = rot[:, None].expand(n_seq, n_frames, 3, 3)
    d = shift.to(x.dtype)
    if d.dim() == 2:
        d = d[:, None].expand(n_seq, n_frames, 3)
    c = body_center(x, center_joint)  # (N, 3)

    v = x.permute(0, 2, 4, 3, 1)  # (N, T, M, V, 3)
    offset = (c[:, None, :] + d)[:, :, None, None, :]  # (N, T, 1, 1, 3)
    out = torch.einsum("ntij,ntmvj->ntmvi", rot, v - offset)
    keep = present_mask(x)[:, :, :, None, None]  # (N, T, M, 1, 1)
    out = torch.where(keep, out, torch.zeros_like(out))
    return out.permute(0, 4, 1, 3, 2).contiguous()  # back to (N, 3, T, V, M)


def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent (paper Eq. 4-5), the naive way with the full 2N x 2N similarity matrix.

    Anchor i of the 2N projections has its positive at i +- N; the denominator runs over every
    k != i (the positive included). The result is the mean over all 2N anchors.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.nn.functional.cross_entropy(logits, positive)


class LARSReference(torch.optim.Optimizer):
    """LARS as in SimCLR, one parameter at a time (the slow, obvious version).

    For each parameter w with gradient g:
      g <- g + wd * w;  trust = eta * ||w|| / (||g|| + eps)  (1 when ||w|| or ||g|| is 0);
      with ``clip`` (LARC): trust <- min(trust / lr, 1);  u = trust * g;
      v <- m * v + u;  w <- w - lr * (u + m * v if nesterov else v).
    With ``exclude_bias_and_norm`` the 1-D parameters (biases, norm weights) skip both the weight
    decay and the trust ratio.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-6, trust_coefficient=1e-3, eps=0.0,
                 exclude_bias_and_norm=True, clip=False, nesterov=False):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps,
                        exclude_bias_and_norm=exclude_bias_and_norm, clip=clip, nesterov=nesterov)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad.clone()
                if not (group["exclude_bias_and_norm"] and w.dim() == 1):
                    g = g + group["weight_decay"] * w
                    w_norm, g_norm = float(w.norm()), float(g.norm())
                    trust = 1.0
                    if w_norm > 0 and g_norm > 0:
                        trust = group["trust_coefficient"] * w_norm / (g_norm + group["eps"])
                    if group["clip"]:
                        trust = min(trust / lr, 1.0)
                    g = g * trust
                state = self.state[w]
                v = state.get("momentum_buffer")
                v = g.clone() if v is None else v.mul_(m).add_(g)
                state["momentum_buffer"] = v
                w.sub_(lr * (g + m * v if group["nesterov"] else v))
        return loss
