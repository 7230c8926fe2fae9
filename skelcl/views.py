"""Virtual-camera samplers: random viewpoints and distances for the paper's positive pairs.

A sampler draws, for every sequence (or every frame), the three angles ``(alpha, beta, gamma)`` of
``R = Rx(alpha) Ry(beta) Rz(gamma)`` and the camera translation ``d`` of ``v' = R (v - d)``
(``skelcl.reference.view_transform``). Everything is drawn on the requested device with torch's
random generators, so sampling never waits for the device and is reproducible from a seed.

Axis convention (NTU RGB+D, Kinect camera coordinates): x points sideways, y up, z along the
original camera's viewing axis. So ``beta`` (about y) is *yaw*, ``alpha`` (about x) is *pitch*
and ``gamma`` (about z) is *roll*.

Distance: ``d = m * unit * u``. The multiplier ``m`` is drawn from ``{0, ..., 5}`` (discrete) or
``[0, 5]`` (continuous). ``unit`` is a length in the data's units; the default 0.5 assumes metres
(NTU), so the paper's six distances span 0 to 2.5 m, about the spread of subject-to-camera distances
in NTU's own setups. ``u`` is, by default, the new camera's viewing axis (``R^T e_z`` in data
coordinates, so the skeleton moves straight along the virtual camera's z axis), or the original
camera's z axis (``"world-z"``), or a random unit vector (``"random"``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor

__all__ = ["ViewSampler", "PRESETS", "get_sampler"]

PAPER_DEGREES = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)
_ANGLE_MODES = ("discrete", "continuous")
_DISTANCE_MODES = ("discrete", "continuous", "fixed")
_DIRECTIONS = ("camera-z", "world-z", "random")


@dataclass(frozen=True)
class ViewSampler:
    """Random virtual camera: angles in radians and translation ``d`` in data units.

    angles:          "discrete" (each random angle drawn from ``angle_set_deg``) or "continuous"
                     (uniform in that angle's ``*_range_deg``).
    random_angles:   which of (alpha, beta, gamma) are random; the others are held at
                     ``fixed_angles_deg`` (the paper's ablations fix one angle).
    distance:        "discrete" (multiplier from {0, 1, ..., distance_max}), "continuous"
                     (uniform in [0, distance_max]) or "fixed" (``distance_fixed``).
    unit:            length of one multiplier step in data units (0.5 = half a metre for NTU).
    direction:       "camera-z", "world-z" or "random" (see the module docstring).
    frame_level:     one camera per frame instead of one per sequence.
    """

    angles: str = "discrete"
    angle_set_deg: tuple[float, ...] = PAPER_DEGREES
    alpha_range_deg: tuple[float, float] = (-180.0, 180.0)
    beta_range_deg: tuple[float, float] = (-180.0, 180.0)
    gamma_range_deg: tuple[float, float] = (-180.0, 180.0)
    random_angles: tuple[bool, bool, bool] = (True, True, True)
    fixed_angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    distance: str = "discrete"
    distance_max: float = 5.0
    distance_fixed: float = 0.0
    unit: float = 0.5
    direction: str = "camera-z"
    frame_level: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        if self.angles not in _ANGLE_MODES:
            raise ValueError(f"angles must be one of {_ANGLE_MODES}, got {self.angles!r}")
        if self.distance not in _DISTANCE_MODES:
            raise ValueError(f"distance must be one of {_DISTANCE_MODES}, got {self.distance!r}")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {self.direction!r}")
        if len(self.angle_set_deg) == 0:
            raise ValueError("angle_set_deg must hold at least one angle")
        if len(self.random_angles) != 3 or len(self.fixed_angles_deg) != 3:
            raise ValueError("random_angles and fixed_angles_deg must have 3 entries (alpha, beta, gamma)")
        for key in ("alpha_range_deg", "beta_range_deg", "gamma_range_deg"):
            lo, hi = getattr(self, key)
            if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
                raise ValueError(f"{key} must be finite, got {(lo, hi)}")
            if not lo <= hi:
                raise ValueError(f"{key} must be (low, high) with low <= high, got {(lo, hi)}")
        values = [*self.angle_set_deg, *self.fixed_angles_deg, self.distance_max, self.distance_fixed]
        values.append(self.unit)
        if not all(math.isfinite(float(v)) for v in values):
            raise ValueError("ViewSampler angles, distances and unit must be finite")
        if self.distance_max < 0 or self.unit < 0:
            raise ValueError(f"distance_max and unit must be >= 0, got {self.distance_max} and {self.unit}")
        if self.distance == "discrete" and float(self.distance_max) != int(self.distance_max):
            raise ValueError(f"discrete distance needs an integer distance_max, got {self.distance_max}")

    def as_dict(self) -> dict:
        """Plain dict of every setting, for logs and configs."""
        return asdict(self)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items() if k != "name")
        return f"ViewSampler[{self.name}]({inner})"

    @property
    def is_identity(self) -> bool:
        """True when every draw is zero angles and zero translation."""
        no_angles = not any(self.random_angles) and not any(self.fixed_angles_deg)
        return no_angles and self.distance == "fixed" and self.distance_fixed * self.unit == 0

    def sample(
        self,
        n: int,
        t: int = 1,
        *,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``(angles, shift)`` float32 on ``device``: (n, 3) each, or (n, t, 3) when frame-level."""
        if n < 0 or t < 1:
            raise ValueError(f"n must be >= 0 and t >= 1, got n={n}, t={t}")
        device = torch.device(device)
        shape = (n, t) if self.frame_level else (n,)
        kw = dict(device=device, generator=generator)
        # A handful of whole-batch ops (no per-axis or per-sample work): on GPU, launch overhead
        # rather than arithmetic is what sampling costs.
        fixed = _constant(tuple(math.radians(a) for a in self.fixed_angles_deg), device)
        if not any(self.random_angles):
            angles = fixed.repeat(*shape, 1)  # a new tensor: never the cached constant itself
        else:
            if self.angles == "discrete":
                table = _constant(tuple(math.radians(a) for a in self.angle_set_deg), device)
                angles = table[torch.randint(len(self.angle_set_deg), (*shape, 3), **kw)]
            else:
                ranges = (self.alpha_range_deg, self.beta_range_deg, self.gamma_range_deg)
                lo = _constant(tuple(math.radians(r[0]) for r in ranges), device)
                span = _constant(tuple(math.radians(r[1] - r[0]) for r in ranges), device)
                angles = torch.addcmul(lo, torch.rand(*shape, 3, **kw), span)
            if not all(self.random_angles):
                held = _constant(tuple(float(not r) for r in self.random_angles), device) > 0
                angles = torch.where(held, fixed, angles)
        if self.distance == "fixed":
            length = torch.full((*shape, 1), float(self.distance_fixed * self.unit), device=device)
        elif self.distance == "discrete":
            steps = torch.randint(int(self.distance_max) + 1, (*shape, 1), **kw)
            length = steps.to(torch.float32) * self.unit
        else:
            length = torch.rand(*shape, 1, **kw) * float(self.distance_max * self.unit)
        if self.direction == "camera-z":
            axis = _camera_z(angles)
        elif self.direction == "world-z":
            axis = _constant((0.0, 0.0, 1.0), device).expand(*shape, 3)
        else:
            axis = torch.nn.functional.normalize(torch.randn(*shape, 3, **kw), dim=-1)
        return angles, length * axis


def _camera_z(angles: Tensor) -> Tensor:
    """Third row of R = Rx Ry Rz, i.e. R^T e_z: the virtual camera's z axis in data coordinates."""
    s, c = angles.sin().unbind(-1), angles.cos().unbind(-1)
    ca_sb = c[0] * s[1]
    return torch.stack([ca_sb * c[2] + s[0] * s[2], ca_sb * s[2] - s[0] * c[2], c[0] * c[1]], dim=-1)


@functools.cache
def _constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    # Built once per device, so a draw does not copy small tables to the device every step.
    return torch.tensor(values, dtype=torch.float32, device=device)


_PAPER = ViewSampler(name="paper")
_MODERATE = ViewSampler(
    name="moderate",
    angles="continuous",
    alpha_range_deg=(-15.0, 15.0),  # pitch
    beta_range_deg=(-60.0, 60.0),  # yaw (y is up in NTU)
    gamma_range_deg=(-15.0, 15.0),  # roll
    distance="continuous",
)
PRESETS: dict[str, ViewSampler] = {
    "paper": _PAPER,
    "paper-frame": replace(_PAPER, frame_level=True, name="paper-frame"),
    "moderate": _MODERATE,
    "no-gamma": replace(_PAPER, random_angles=(True, True, False), name="no-gamma"),
    "no-beta": replace(_PAPER, random_angles=(True, False, True), name="no-beta"),
    "no-alpha": replace(_PAPER, random_angles=(False, True, True), name="no-alpha"),
    "distance-only": replace(_PAPER, random_angles=(False, False, False), name="distance-only"),
    "none": replace(_PAPER, random_angles=(False, False, False), distance="fixed", name="none"),
}
"""Named samplers. ``paper`` follows section 4.3 of the paper (angles from {0, 60, ..., 300} degrees,
distance multiplier from {0, ..., 5} times 0.5 m, one camera per sequence); ``paper-frame`` draws one
camera per frame; ``moderate`` keeps the views recognisable (yaw +-60, pitch and roll +-15 degrees,
distance 0-2.5 m, continuous); ``no-alpha``/``no-beta``/``no-gamma`` hold that angle at 0 and
``distance-only`` holds all three (the paper's ablations); ``none`` is the identity (centring only)."""


def get_sampler(name_or_sampler: str | ViewSampler, **overrides) -> ViewSampler:
    """A preset by name (or a given sampler), with any field replaced: ``get_sampler("paper", unit=1.0)``."""
    if isinstance(name_or_sampler, ViewSampler):
        base = name_or_sampler
    elif isinstance(name_or_sampler, str):
        if name_or_sampler not in PRESETS:
            raise ValueError(f"name_or_sampler: unknown preset {name_or_sampler!r}; "
                             f"choose from {sorted(PRESETS)}")
        base = PRESETS[name_or_sampler]
    else:
        raise ValueError(f"name_or_sampler must be a preset name or a ViewSampler, "
                         f"got {type(name_or_sampler).__name__}")
    if not overrides:
        return base
    unknown = set(overrides) - set(base.as_dict())
    if unknown:
        raise ValueError(f"unknown ViewSampler fields {sorted(unknown)}")
    return replace(base, **overrides)
