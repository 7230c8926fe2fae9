"""LARS with SimCLR semantics, applied to all parameters at once: a fused C++ kernel on CPU
(csrc/lars.cpp), two Triton kernels on CUDA (kernels/lars.py), torch._foreach_* operations where
neither applies."""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import repeat
from operator import attrgetter, is_

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
    never waits for the device. The hyper-parameters are Python numbers, except ``lr``, which may
    also be a 0-dim floating-point tensor on the parameters' device (or on the CPU): a schedule then
    changes its value in place (``torch.optim.lr_scheduler`` does), so a step captured in a CUDA graph
    or compiled with ``torch.compile`` reads the current rate instead of a baked-in number.
    Gradients are not modified. On CUDA, each bucket (one device and dtype) of contiguous tensors is
    updated by two Triton kernels (kernels/lars.py) that reach all its tensors through a table of data
    pointers, uploaded each step without a sync: one launch per bucket for the norms and one for the
    update, where the foreach path makes about a dozen; while a CUDA graph is being captured, the
    foreach path runs instead (the table copy cannot be captured; a replay costs one launch anyway).
    On CPU, float32 and float64 groups of contiguous tensors go to a
    fused C++/OpenMP kernel instead (``torch.ops.skelcl.lars_step_``, built from csrc/lars.cpp on
    first use): per tensor, one pass reads ``w`` and ``g`` for both norms (in double) and a second
    one, right after while they are still in cache, updates ``w`` and ``v``, where the foreach path
    makes one memory pass per operation; it falls back to the foreach path when the extension
    cannot be built or a tensor does not fit it (another layout, a non-contiguous gradient). The
    momentum buffer of each parameter lives in ``state[p]["momentum_buffer"]`` and round-trips
    through ``state_dict``.

    Which parameters a group updates and how they split (device, dtype, exclusion) is worked out
    once and kept between steps, as long as the group's ``params``, its exclusion settings, the set
    of parameters with a gradient and the optimiser state stay the same; any change is picked up at
    the next step. Hyper-parameters such as ``lr`` are read at every step.

    With AMP, call ``scaler.unscale_(opt)`` (optional, e.g. before gradient clipping) and then
    ``scaler.step(opt)``: the scaler skips the whole step when it found an inf or a NaN.

    How this differs from three LARS implementations users may know (as read in their sources):

    * SimCLR's TensorFlow ``LARSOptimizer``: the learning rate goes into the momentum buffer
      (``v <- momentum * v + lr * trust * g``, then ``w <- w - v``); here it multiplies the buffer
      at the update, as torch's SGD does. The two agree while ``lr`` is constant and differ during
      warm-up and decay, where a buffer there still carries the earlier rates.

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
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps,
                        exclude_bias_and_norm=bool(exclude_bias_and_norm), clip=bool(clip),
                        nesterov=bool(nesterov), lars_exclude=None)
        _check_settings(defaults)
        super().__init__(params, defaults)  # each group is checked by add_param_group
        # id(group) -> _Plan: the group's buckets, kept between steps while they still apply; the
        # state they were made with and its length then (see _prepare).
        self._plans: dict[int, _Plan] = {}
        self._planned_state: tuple = (None, 0)
        # "auto": flat broadcast on CUDA, 0-dim scalars elsewhere; tests force either one.
        self._broadcast = "auto"
        # The fused C++ kernel for eligible CPU buckets; tests set it False to run the foreach path.
        self._fused_cpu = True
        # The Triton kernels (kernels/lars.py): "auto" for CUDA buckets; True also for CPU buckets under
        # TRITON_INTERPRET=1 (tests); False never.
        self._triton = "auto"

    def add_param_group(self, param_group: dict) -> None:
        """torch's, then the constructor's checks on the group's settings (defaults filled in)."""
        super().add_param_group(param_group)
        try:
            _check_settings(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()
            raise

    def __setstate__(self, state):
        super().__setstate__(state)  # unpickling, and load_state_dict (new groups and state)
        self._plans = {}
        self._planned_state = (None, 0)
        self.__dict__.setdefault("_broadcast", "auto")
        self.__dict__.setdefault("_fused_cpu", True)
        self.__dict__.setdefault("_triton", "auto")
        for group in self.param_groups:
            group.setdefault("lars_exclude", None)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._planned_state[0] is not self.state or self._planned_state[1] != len(self.state):
            self._plans = {}  # the state was replaced, cleared or edited: the plans' buffers may be stale
        for group in self.param_groups:
            plan, tensors = self._prepare(group)
            for bucket, (grads, bufs) in zip(plan.buckets, tensors):
                self._update(group, bucket, grads, bufs)
        return loss

    def _prepare(self, group: dict) -> tuple[_Plan, list]:
        """The group's plan and, per bucket, its gradients and momentum buffers for this step.

        The plan (which parameters have gradients, their split by device, dtype and exclusion, and
        their state dicts) is kept between steps and rebuilt when it no longer applies: another
        ``params`` list or exclusion setting, a gradient that appeared or disappeared, a momentum
        buffer that is gone, a parameter's state dict that was replaced (``opt.state[p] = {...}``),
        or (all plans, see step) a state that was replaced, loaded or changed in length other than
        by the plans themselves.
        """
        plan = self._plans.get(id(group))
        if plan is not None and plan.group is group and plan.current(group):
            tensors = plan.gather(self.state)
            if tensors is not None:
                return plan, tensors
        plan = self._plans[id(group)] = self._plan(group)
        self._planned_state = (self.state, len(self.state))
        if len(self._plans) > len(self.param_groups):  # drop the plans of groups that are gone
            live = {id(g) for g in self.param_groups}
            self._plans = {k: v for k, v in self._plans.items() if k in live}
        return plan, plan.gather(self.state)

    def _plan(self, group: dict) -> _Plan:
        """Split the group's parameters with gradients by (device, dtype) and by exclusion."""
        rule = group["lars_exclude"]
        buckets: dict = {}
        idle = []
        for p in group["params"]:
            if p.grad is None:
                idle.append(p)
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
        return _Plan(group, idle, [_Bucket(device, dtype, adapted, excluded, self.state)
                                   for (device, dtype), (adapted, excluded) in buckets.items()])

    def _update(self, group: dict, bucket: _Bucket, grads: list[Tensor], bufs: list[Tensor]) -> None:
        lr, m = _lr_on(group["lr"], bucket.device), group["momentum"]
        params = bucket.params
        if bucket.fusable and self._fused_cpu:
            op = _cpu_op()
            # The kernel checks every tensor (dense, contiguous, one dtype) and returns False, having
            # changed nothing, when one does not fit; the foreach path below takes the step then.
            if op is not None and op(params, grads, bufs, bucket.n_adapted, float(lr), float(m),
                                     float(group["weight_decay"]), float(group["trust_coefficient"]),
                                     float(group["eps"]), group["clip"], group["nesterov"]):
                return
        for g in grads:
            if g.is_sparse:
                raise ValueError("params: LARS does not support sparse gradients")
        if self._use_triton(bucket) and bucket.triton_step(grads, bufs, group, lr):
            return
        n = bucket.n_adapted
        if not n:  # trust 1 everywhere: plain momentum SGD
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, grads)
            if group["nesterov"]:  # w - lr * (g + m * v) as w - lr * g - lr * m * v: no temporaries
                _sub_scaled(params, grads, lr)
                _sub_scaled(params, bufs, lr * m)
            else:
                _sub_scaled(params, bufs, lr)
            return
        # u = g + wd * w for the adapted tensors (new tensors: p.grad stays untouched), g otherwise.
        u = list(torch._foreach_add(grads[:n], params[:n], alpha=group["weight_decay"]))
        scale = self._scale(group, bucket, params[:n] + u, lr)
        u += grads[n:]
        torch._foreach_mul_(bufs, m)
        torch._foreach_addcmul_(bufs, u, scale)  # v <- m * v + trust * u in one pass
        if group["nesterov"]:  # w - lr * (trust * u + m * v), as two updates of w: no temporaries
            if isinstance(lr, Tensor):
                _sub_scaled(params, torch._foreach_mul(u, scale), lr)
            else:
                torch._foreach_addcmul_(params, u, scale, value=-lr)
            _sub_scaled(params, bufs, lr * m)
        else:
            _sub_scaled(params, bufs, lr)

    def _use_triton(self, bucket: _Bucket) -> bool:
        if self._triton is False or bucket.dtype not in _TRITON_DTYPES:
            return False
        if bucket.device.type == "cuda":
            # A CUDA graph cannot capture the kernels' host-to-device table copy: the foreach path
            # records instead (replayed, its many launches cost nothing).
            return _triton_kernels() is not None and not torch.cuda.is_current_stream_capturing()
        return (self._triton is True and bucket.device.type == "cpu"
                and os.environ.get("TRITON_INTERPRET") == "1" and _triton_kernels() is not None)

    def _scale(self, group: dict, bucket: _Bucket, w_and_u: list[Tensor], lr) -> list[Tensor]:
        """One multiplier per tensor of the bucket: the trust ratios of the adapted ones, then 1s.

        Computed on the device into the bucket's trust buffer (whose extra last element, a 1, serves
        the excluded tensors), from one ``torch._foreach_norm`` call. CUDA's fused foreach kernels need both
        lists to have the same shapes (a 0-dim operand sends them down a per-tensor loop), so there
        the ratios are spread over a flat buffer with views shaped like the parameters (one
        index_select per step). On CPU foreach ops loop per tensor anyway and 0-dim multipliers avoid
        the buffer.
        """
        n = bucket.n_adapted
        trust, head, one = bucket.trust_buffer()
        norms = torch.stack(torch._foreach_norm(w_and_u))  # ||w|| of the adapted tensors, then ||u||
        if norms.dtype in (torch.float16, torch.bfloat16):
            norms = norms.float()
        w_norm, g_norm = norms[:n], norms[n:]
        denominator = g_norm + group["eps"] if group["eps"] else g_norm
        ratio = w_norm / denominator * group["trust_coefficient"]
        valid = torch.minimum(w_norm, g_norm) > 0
        if ratio.dtype != trust.dtype:  # float16 / bfloat16 parameters
            ratio = torch.where(valid, ratio, 1.0)
            head.copy_(torch.clamp(ratio / lr, max=1.0) if group["clip"] else ratio)
        elif group["clip"]:
            torch.clamp(torch.where(valid, ratio, 1.0).div_(lr), max=1.0, out=head)
        else:
            torch.where(valid, ratio, one, out=head)
        flat = self._broadcast == "flat" or (self._broadcast == "auto" and bucket.device.type == "cuda")
        return bucket.spread(trust) if flat else bucket.scalars(trust)


class _Bucket:
    """The parameters of one group on one device with one dtype that have gradients: the adapted
    ones, then the excluded ones, with their state dicts and the step's reusable buffers."""

    __slots__ = ("device", "dtype", "params", "n_adapted", "states", "fusable", "_trust", "_scalars",
                 "_flat", "_views", "_triton_schedule")

    def __init__(self, device: torch.device, dtype: torch.dtype, adapted: list[Tensor],
                 excluded: list[Tensor], state: dict):
        self.device, self.dtype = device, dtype
        self.params = adapted + excluded
        self.n_adapted = len(adapted)
        self.states = [state[p] for p in self.params]
        self.fusable = device.type == "cpu" and dtype in _FUSED_DTYPES
        self._trust = self._scalars = self._flat = self._views = self._triton_schedule = None

    def triton_step(self, grads: list[Tensor], bufs: list[Tensor], group: dict, lr) -> bool:
        """The step by the Triton kernels, or False (nothing changed) when a tensor does not fit them:
        every weight, gradient and buffer contiguous, of the bucket's dtype, with the weight's size."""
        params, dtype = self.params, self.dtype
        numels = list(map(Tensor.numel, params))
        # map() over the lists: this check runs every step, on the host, for every tensor
        if not (all(map(Tensor.is_contiguous, params)) and all(map(Tensor.is_contiguous, grads))
                and all(map(Tensor.is_contiguous, bufs)) and list(map(Tensor.numel, grads)) == numels
                and list(map(Tensor.numel, bufs)) == numels
                and set(map(_dtype_of, grads)) == {dtype} and set(map(_dtype_of, bufs)) == {dtype}):
            return False
        kernels = _triton_kernels()
        schedule = self._triton_schedule
        if schedule is None or schedule.numels != numels:  # built once; again if a weight was resized
            schedule = kernels.lars_schedule(numels, self.n_adapted, dtype, self.device)
            self._triton_schedule = schedule
        kernels.lars_step_(schedule, params, grads, bufs, lr, group["momentum"], group["weight_decay"],
                           group["trust_coefficient"], group["eps"], group["clip"], group["nesterov"])
        return True

    def trust_buffer(self) -> tuple[Tensor, Tensor, Tensor]:
        """n_adapted + 1 elements: the trust ratios, written each step, then a constant 1; with
        views of the ratios and of the 1."""
        if self._trust is None:
            trust = torch.ones(self.n_adapted + 1, dtype=self.dtype, device=self.device)
            self._trust = (trust, trust[: self.n_adapted], trust[self.n_adapted])
        return self._trust

    def scalars(self, trust: Tensor) -> list[Tensor]:
        """0-dim views of ``trust``, one per parameter."""
        if self._scalars is None:
            ones = [trust[self.n_adapted]] * (len(self.params) - self.n_adapted)
            self._scalars = list(trust[: self.n_adapted].unbind(0)) + ones
        return self._scalars

    def spread(self, trust: Tensor) -> list[Tensor]:
        """``trust`` spread over a flat buffer, as views shaped like the parameters."""
        if self._flat is None:
            numels = [p.numel() for p in self.params]
            # Filled on the device (no host-to-device copy), so that this also works when the first
            # step to need it is being captured into a CUDA graph. Excluded tensors -> the 1.
            ids = torch.cat([torch.full((n,), min(i, self.n_adapted), dtype=torch.long, device=self.device)
                             for i, n in enumerate(numels)])
            buffer = torch.empty(len(ids), dtype=trust.dtype, device=self.device)
            self._views = [v.view(p.shape) for v, p in zip(buffer.split(numels), self.params)]
            self._flat = (ids, buffer)
        ids, buffer = self._flat
        torch.index_select(trust, 0, ids, out=buffer)
        return self._views


class _Plan:
    """A group's buckets and what they were made from (see LARS._prepare)."""

    __slots__ = ("group", "params", "rule", "exclude", "idle", "buckets")

    def __init__(self, group: dict, idle: list[Tensor], buckets: list[_Bucket]):
        self.group = group
        self.params = list(group["params"])
        self.rule, self.exclude = group["lars_exclude"], group["exclude_bias_and_norm"]
        self.idle, self.buckets = idle, buckets

    def current(self, group: dict) -> bool:
        params = group["params"]
        return (group["lars_exclude"] is self.rule and group["exclude_bias_and_norm"] == self.exclude
                and len(params) == len(self.params) and all(map(is_, params, self.params)))

    def gather(self, state: dict) -> list[tuple[list[Tensor], list[Tensor]]] | None:
        """Per bucket, the gradients and buffers; None when the set of gradients changed or a
        parameter's state dict is no longer the one the bucket holds."""
        out = []
        for bucket in self.buckets:
            grads = [p.grad for p in bucket.params]
            if any(map(is_, grads, repeat(None))):
                return None
            if not all(map(is_, map(state.get, bucket.params), bucket.states)):
                return None
            try:
                bufs = [s["momentum_buffer"] for s in bucket.states]
            except KeyError:
                return None
            out.append((grads, bufs))
        for p in self.idle:
            if p.grad is not None:
                return None
        return out


_FUSED_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_TRITON: list = []  # [skelcl.kernels.lars or None] once the import was tried
_dtype_of = attrgetter("dtype")


def _triton_kernels():
    """skelcl.kernels.lars, or None where triton is not installed."""
    if not _TRITON:
        try:
            from skelcl.kernels import lars as kernels
        except ImportError:
            kernels = None
        _TRITON.append(kernels)
    return _TRITON[0]


_CPU_OP: list = []  # [torch.ops.skelcl.lars_step_ or None] once the build was tried


def _cpu_op():
    """torch.ops.skelcl.lars_step_, or None when the C++ extension cannot be built."""
    if not _CPU_OP:
        from skelcl._cpp import load_extension

        ok = load_extension("skelcl_lars", ("lars.cpp",)) is not None
        _CPU_OP.append(torch.ops.skelcl.lars_step_.default if ok else None)
    return _CPU_OP[0]


def _check_settings(group: dict) -> None:
    """The hyper-parameters of a group (or the defaults): a ValueError naming the first bad one."""
    _check_lr(group["lr"])
    for name in ("momentum", "weight_decay", "trust_coefficient", "eps"):
        _check_number(name, group[name], minimum=0.0)
    if not (group["lars_exclude"] is None or isinstance(group["lars_exclude"], bool)):
        raise ValueError(f"lars_exclude: must be None, True or False, got {group['lars_exclude']!r}")
    if group["clip"] and float(group["lr"]) == 0:
        raise ValueError("lr: must be positive with clip=True (the LARC clip divides by lr)")


def _check_lr(lr) -> None:
    if isinstance(lr, Tensor):
        if lr.dim() != 0 or not lr.is_floating_point():
            raise ValueError(f"lr: a tensor lr must be a 0-dim floating-point tensor, got shape "
                             f"{tuple(lr.shape)} and dtype {lr.dtype}")
        _check_number("lr", float(lr), minimum=0.0)  # read once, here
    else:
        _check_number("lr", lr, minimum=0.0)


def _lr_on(lr, device: torch.device):
    """The step's learning rate for a bucket on ``device``: a Python number, or a 0-dim tensor on
    that device (a CPU tensor for another device is read as a number: no device sync)."""
    if not isinstance(lr, Tensor) or lr.device == device:
        return lr
    if lr.device.type == "cpu":
        return lr.item()
    raise ValueError(f"lr: a tensor lr must be on the parameters' device ({device}) or the CPU, "
                     f"got {lr.device}")


def _sub_scaled(params: list[Tensor], tensors: list[Tensor], scale) -> None:
    """params -= scale * tensors, for a Python number or a 0-dim tensor ``scale``."""
    if isinstance(scale, Tensor):
        torch._foreach_sub_(params, torch._foreach_mul(tensors, scale))
    else:
        torch._foreach_add_(params, tensors, alpha=-scale)


def _check_number(name: str, value, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a Python number, got {type(value).__name__}")
    if not value >= minimum:  # also rejects NaN
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
