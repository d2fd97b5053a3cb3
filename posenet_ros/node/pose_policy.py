"""The "no fix" policy: which frames' poses the node publishes on /relocalized_pose, and why not.

A learned relocalizer's errors are heavy-tailed (a 99th-percentile error of tens of metres is usual
outdoors), so a robot needs to know when *not* to use a pose. A frame is **confident** when

    1. it is a known place (the loop-closure flag), and
    2. its position σ (√trace of the position block of the covariance, metres) is at most
       `max_position_sigma_m`, and
    3. its rotation σ (√trace of the rotation block, in degrees) is at most `max_rotation_sigma_deg`;

the checks are made in this order and the first that fails is the frame's reason ("unknown_place",
"position_sigma", "rotation_sigma"; "confident" when none fails). A confident frame's pose is
published; the others are withheld, unless `publish_unknown` is set, which publishes every pose (and
still reports the reason).

Default limits come from the checkpoint's calibration (`posenet-ros calibrate` stores the 99th
percentile of the calibrated σ of its held-out, in-map frames: `SIGMA_LIMIT_PERCENTILE`), so a
well-calibrated model's in-map frames pass and a σ beyond what the map ever showed does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENT = "confident"
REASONS = (CONFIDENT, "unknown_place", "position_sigma", "rotation_sigma")  # in the order of the checks
SIGMA_LIMIT_PERCENTILE = 99.0  # of the calibration frames' σ: the default limits


@dataclass(frozen=True)
class PolicyDecision:
    """The verdict on one frame: `reason` (one of `REASONS`), whether its pose is published, and the
    σ it was judged on (position metres, rotation degrees)."""

    reason: str
    published: bool
    sigma_position_m: float
    sigma_rotation_deg: float

    @property
    def confident(self) -> bool:
        return self.reason == CONFIDENT


def pose_sigmas(covariance_66: np.ndarray) -> tuple[float, float]:
    """(position σ in metres, rotation σ in degrees): √trace of the position and rotation blocks of a
    6x6 covariance over (x, y, z, rot X, rot Y, rot Z) in metres² and radians². NaN entries give NaN."""
    covariance = np.asarray(covariance_66, np.float64)
    if not np.all(np.isfinite(covariance)):
        return math.nan, math.nan
    return (math.sqrt(max(float(np.trace(covariance[:3, :3])), 0.0)),
            math.degrees(math.sqrt(max(float(np.trace(covariance[3:, 3:])), 0.0))))


@dataclass(frozen=True)
class PosePolicy:
    """Publish or withhold each frame's pose (module docstring). Limits: metres and degrees; `inf`
    turns a check off. A NaN σ fails its check."""

    max_position_sigma_m: float = math.inf
    max_rotation_sigma_deg: float = math.inf
    publish_unknown: bool = False

    def decide(self, known_place: bool, covariance_66: np.ndarray) -> PolicyDecision:
        """The decision for a frame with this loop-closure flag and 6x6 covariance."""
        sigma_position, sigma_rotation = pose_sigmas(covariance_66)
        if not known_place:
            reason = "unknown_place"
        elif not sigma_position <= self.max_position_sigma_m:
            reason = "position_sigma"
        elif not sigma_rotation <= self.max_rotation_sigma_deg:
            reason = "rotation_sigma"
        else:
            reason = CONFIDENT
        return PolicyDecision(reason, reason == CONFIDENT or self.publish_unknown, sigma_position,
                              sigma_rotation)

    def describe(self) -> str:
        """One line for the node's log."""
        limits = ", ".join(f"{name} <= {value:g}{unit}" for name, value, unit in (
            ("position σ", self.max_position_sigma_m, " m"), ("rotation σ", self.max_rotation_sigma_deg, "°"))
            if math.isfinite(value)) or "no σ limit"
        return (f"publishing {'every pose' if self.publish_unknown else 'confident poses only'} "
                f"(known place, {limits})")


def calibrated_sigma_limits(covariance_N66: np.ndarray,
                            percentile: float = SIGMA_LIMIT_PERCENTILE) -> dict[str, float]:
    """The default σ limits from the calibrated covariances of held-out in-map frames (N, 6, 6):
    {"position_m", "rotation_deg"} at `percentile` of their position and rotation σ."""
    sigmas = np.array([pose_sigmas(covariance) for covariance in covariance_N66], np.float64).reshape(-1, 2)
    sigmas = sigmas[np.all(np.isfinite(sigmas), axis=1)]
    if not len(sigmas):
        raise ValueError("σ limits need frames with a finite covariance")
    position, rotation = np.percentile(sigmas, percentile, axis=0)
    return {"position_m": float(position), "rotation_deg": float(rotation), "percentile": percentile}


def policy_limits(max_position_sigma: float, max_rotation_sigma: float,
                  calibration_report: dict[str, Any]) -> tuple[float, float, str]:
    """(position limit m, rotation limit deg, where they came from): the parameters where they are not
    NaN, else the checkpoint's calibrated limits (`calibration_report["sigma_limits"]`), else inf (no
    limit: a checkpoint calibrated before the limits were stored, or never calibrated)."""
    stored = calibration_report.get("sigma_limits") or {}
    limits, sources = [], []
    for value, key in ((max_position_sigma, "position_m"), (max_rotation_sigma, "rotation_deg")):
        if not math.isnan(value):
            limits.append(value)
            sources.append("parameter")
        elif key in stored:
            limits.append(float(stored[key]))
            sources.append(f"checkpoint calibration (p{stored.get('percentile', SIGMA_LIMIT_PERCENTILE):g})")
        else:
            limits.append(math.inf)
            sources.append("none stored in the checkpoint")
    source = sources[0] if sources[0] == sources[1] else f"position: {sources[0]}, rotation: {sources[1]}"
    return limits[0], limits[1], source
