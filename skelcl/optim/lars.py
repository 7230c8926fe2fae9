"""LARS with SimCLR semantics, applied to all parameters at once: a fused C++ kernel on CPU
(csrc/lars.cpp), torch._foreach_* operations elsewhere."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class LARS(torch.optim.Optimizer):
    r"""Layer-wise Adaptive Rate Scaling as used by SimCLR, multi-tensor and free of host syncs.

    For every parameter ``w`` with gradient ``g`` (one "layer" = one tensor)::

        g     <- g + weight_decay * w
        trust  = trust_coefficient * ||w|| / (||g|| + eps)     (1 where ||w|| = 0 or ||g|| = 0)
        trust <- min(trust / lr, 1)                            (only with clip=True: LARC)
        u      = trust * g
        v     <- momentum * v + u
        w     <- w - lr * v               (nesterov: w <- w - lr * (u + momentum * v))

    Excluded parameters skip the first three lines (no weight decay, no adaptation) and follow
    plain momentum SGD. By default a parameter is excluded when ``exclude_bias_and_norm`` is true
    and it is 1-D (biases, batch-norm and layer-norm weights). A parameter group can override the
    rule with the key ``"lars_exclude"``: ``True`` excludes every tensor of the group, ``False``
    adapts every tensor of the group (1-D ones included), ``None`` (the default) applies the
    ``exclude_bias_and_norm`` rule::

        LARS([{"params": backbone.parameters()},
              {"params": head.parameters(), "lars_exclude": True}], lr=4.8)

    This is exactly :class:`skelcl.reference.LARSReference`, computed differently: per device and
    dtype, a handful of ``torch._foreach_*`` calls update all tensors, the per-tensor norms come
    from ``torch._foreach_norm``, and the trust ratios stay on the device as one tensor (the
    zero-norm rule is a ``torch.where``). Nothing reads a tensor value on the host, so a step
    never waits for the device. ``lr`` and the other hyper-parameters must be Python numbers.
    Gradients are not modified. On CPU, float32 and float64 groups of contiguous tensors go to a
    fused C++/OpenMP kernel instead (``torch.ops.skelcl.lars_step_``, built from csrc/lars.cpp on
    first use): one pass reads ``w`` and ``g`` for both norms (in double), a second one updates
    ``w`` and ``v``, where the foreach path makes one memory pass per operation; it falls back to
    the foreach path when the extension cannot be built. The momentum buffer of each parameter lives in
    ``state[p]["momentum_buffer"]`` and round-trips through ``state_dict``.

    With AMP, call ``scaler.unscale_(opt)`` (optional, e.g. before gradient clipping) and then
    ``scaler.step(opt)``: the scaler skips the whole step when it found an inf or a NaN.

    How this differs from two LARS implementations users may know (as read in their sources):

    * timm (``timm.optim.Lars``): the trust-ratio denominator is ``||g|| + weight_decay * ||w|| +
      eps`` with the raw gradient (here: the norm of the decayed gradient ``||g + wd * w||``, as
      in SimCLR), ``eps`` defaults to 1e-8 (here 0), there is no exclusion by shape: a group is
      adapted only when its ``weight_decay`` is non-zero (or ``always_adapt``), so exclusion is
      done by putting biases and norms into a group with zero weight decay; momentum has a
      dampening option.
    * solo-learn (``solo.utils.lars.LARS``, from Lightning Bolts): the same ``||g|| + wd * ||w||
      + eps`` denominator; exclusion by ``p.ndim == 1`` behind a flag that is off by default;
      when either norm is zero it skips the weight decay too (here the weight decay is still
      added and only the trust ratio becomes 1); the LARC clip is applied only when both norms
      are non-zero (here also to the ratio 1, as ``min(1 / lr, 1)``); the zero-norm test
      compares tensors in Python, which synchronises with the device for every parameter.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 1e-3, eps: float = 0.0, exclude_bias_and_norm: bool = True,
                 clip: bool = False, nesterov: bool = False):
        _check_number("lr", lr, minimum=0.0)
        _check_number("momentum", momentum, minimum=0.0)
        _check_number("weight_decay", weight_decay, minimum=0.0)
        _check_number("trust_coefficient", trust_coefficient, minimum=0.0)
        _check_number("eps", eps, minimum=0.0)
        if clip and lr == 0:
            raise ValueError("lr: must be positive with clip=True (the LARC clip divides by lr)")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps,
                        exclude_bias_and_norm=bool(exclude_bias_and_norm), clip=bool(clip),
                        nesterov=bool(nesterov), lars_exclude=None)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["lars_exclude"] not in (None, True, False):
                raise ValueError(f"lars_exclude: must be None, True or False, got {group['lars_exclude']!r}")
        # (device, dtype, shapes) -> (element -> tensor index, flat trust buffer, its views): CUDA path.
        self._spread: dict[tuple, tuple] = {}
        # "auto": flat broadcast on CUDA, 0-dim scalars elsewhere; tests force either one.
        self._broadcast = "auto"
        # The fused C++ kernel for eligible CPU buckets; tests set it False to run the foreach path.
        self._fused_cpu = True

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_spread", {})
        self.__dict__.setdefault("_broadcast", "auto")
        self.__dict__.setdefault("_fused_cpu", True)
        for group in self.param_groups:
            group.setdefault("lars_exclude", None)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for (_device, _dtype), (adapted, excluded) in self._buckets(group).items():
                self._update(group, adapted, excluded)
        return loss

    def _buckets(self, group: dict) -> dict:
        """Split the group's parameters with gradients by (device, dtype) and by exclusion."""
        rule = group["lars_exclude"]
        buckets: dict = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("params: LARS does not support sparse gradients")
            state = self.state[p]
            if "momentum_buffer" not in state:
                # m * 0 + u == u: a zero buffer gives the reference's first step (v = u) exactly.
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            is_excluded = rule if rule is not None else (group["exclude_bias_and_norm"] and p.dim() == 1)
            adapted, excluded = buckets.setdefault((p.device, p.dtype), ([], []))
            (excluded if is_excluded else adapted).append(p)
        return buckets

    def _update(self, group: dict, adapted: list[Tensor], excluded: list[Tensor]) -> None:
        lr, m = group["lr"], group["momentum"]
        params = adapted + excluded
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        grads = [p.grad for p in params]
        if self._fused_cpu and _fusable(params, grads, bufs):
            op = _cpu_op()
            if op is not None:
                op(params, grads, bufs, len(adapted), float(lr), float(m), float(group["weight_decay"]),
                   float(group["trust_coefficient"]), float(group["eps"]), group["clip"], group["nesterov"])
                return
        # u = g + wd * w for the adapted tensors (new tensors: p.grad stays untouched), g otherwise.
        u = [p.grad for p in excluded]
        if adapted:
            u[:0] = torch._foreach_add([p.grad for p in adapted], adapted, alpha=group["weight_decay"])
        torch._foreach_mul_(bufs, m)
        if not adapted:  # trust 1 everywhere: plain momentum SGD
            torch._foreach_add_(bufs, u)
            step = torch._foreach_add(u, bufs, alpha=m) if group["nesterov"] else bufs
            torch._foreach_add_(params, step, alpha=-lr)
            return
        trust = self._trust(group, adapted, u[: len(adapted)], len(excluded))
        scale = self._per_tensor(trust, params)
        if group["nesterov"]:
            scaled = torch._foreach_mul(u, scale)  # trust * u, needed twice
            torch._foreach_add_(bufs, scaled)
            torch._foreach_add_(scaled, bufs, alpha=m)
            torch._foreach_add_(params, scaled, alpha=-lr)
        else:
            torch._foreach_addcmul_(bufs, u, scale)  # v <- m * v + trust * u in one pass
            torch._foreach_add_(params, bufs, alpha=-lr)

    def _trust(self, group: dict, params: list[Tensor], u: list[Tensor], n_excluded: int) -> Tensor:
        """Trust ratios of the adapted tensors, then 1 for each of the n_excluded ones, on the device."""
        n = len(params)
        norms = torch.stack(list(torch._foreach_norm(params)) + list(torch._foreach_norm(u)))
        if norms.dtype in (torch.float16, torch.bfloat16):
            norms = norms.float()
        w_norm, g_norm = norms[:n], norms[n:]
        denominator = g_norm + group["eps"] if group["eps"] else g_norm
        ratio = w_norm / denominator * group["trust_coefficient"]
        trust = torch.where(torch.minimum(w_norm, g_norm) > 0, ratio, 1.0)
        if group["clip"]:
            trust = torch.clamp(trust / group["lr"], max=1.0)
        if n_excluded:
            trust = torch.cat([trust, trust.new_ones(n_excluded)])
        return trust.to(params[0].dtype)

    def _per_tensor(self, trust: Tensor, params: list[Tensor]) -> list[Tensor]:
        """One multiplier per parameter, in a form the multi-tensor kernels accept.

        CUDA's fused foreach kernels need both lists to have the same shapes (a 0-dim operand
        sends them down a per-tensor loop), so there the ratios are spread over a flat buffer
        (kept between steps, as are its views shaped like the parameters: one index_select per
        step). On CPU foreach ops loop per tensor anyway and 0-dim multipliers avoid the buffer.
        """
        flat = self._broadcast == "flat" or (self._broadcast == "auto" and trust.device.type == "cuda")
        if not flat:
            return list(trust.unbind(0))
        key = (trust.device, trust.dtype, tuple(p.shape for p in params))
        cached = self._spread.get(key)
        if cached is None:
            numels = [p.numel() for p in params]
            ids = torch.repeat_interleave(torch.arange(len(numels)), torch.tensor(numels)).to(trust.device)
            buffer = torch.empty(len(ids), dtype=trust.dtype, device=trust.device)
            views = [v.view(p.shape) for v, p in zip(buffer.split(numels), params)]
            cached = self._spread[key] = (ids, buffer, views)
        ids, buffer, views = cached
        torch.index_select(trust, 0, ids, out=buffer)
        return views


_FUSED_DTYPES = (torch.float32, torch.float64)
_CPU_OP: list = []  # [torch.ops.skelcl.lars_step_ or None] once the build was tried


def _fusable(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor]) -> bool:
    """Whether the fused CPU kernel takes this bucket: contiguous CPU float32/float64 tensors."""
    first = params[0]
    if first.device.type != "cpu" or first.dtype not in _FUSED_DTYPES:
        return False
    # PyTorch keeps .grad at its parameter's dtype, device and shape; buffers loaded from a state
    # dict are cast to the parameter's dtype and device, so only layout and buffer dtype vary.
    return all(p.is_contiguous() and g.is_contiguous() and v.is_contiguous() and v.dtype == p.dtype
               for p, g, v in zip(params, grads, bufs))


def _cpu_op():
    """torch.ops.skelcl.lars_step_, or None when the C++ extension cannot be built."""
    if not _CPU_OP:
        from skelcl._cpp import load_extension

        ok = load_extension("skelcl_lars", ("lars.cpp",)) is not None
        _CPU_OP.append(torch.ops.skelcl.lars_step_.default if ok else None)
    return _CPU_OP[0]


def _check_number(name: str, value, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a Python number, got {type(value).__name__}")
    if not value >= minimum:  # also rejects NaN
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
