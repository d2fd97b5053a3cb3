"""The odometry-aided causal filter: per-frame camera poses fused with the robot's own motion.

An error-state Kalman filter over the camera pose world_from_cam. Per frame it
- predicts the pose from its previous estimate moved by the motion since the previous frame: the
  robot's odometry when it has it for this frame (`OdometryIncrement`), else the temporal model's
  learned motion (`LearnedMotion`; a fallback counted by the caller);
- updates it with the per-frame pose and its calibrated covariance C_t (what the node publishes
  without smoothing).

The per-frame errors on new views are not white: they are a slowly varying bias along the trajectory
(lag-1 correlation about 0.95 on the synthetic scenes), so a filter treating them as independent would
average far too confidently. The measurement model is therefore z_t = x_t + b_t + v_t: a bias b_t,
per axis an AR(1) process in distance travelled with standard deviation √(β C_t[i, i]) and correlation
exp(-d / L_i) over d metres (d: the camera's translation between the frames), plus white noise v_t of
covariance (1 - β) C_t. β (`bias_share`) and the correlation lengths L_i are `FusionParameters`, the
lengths fitted on held-out sequences by `train-temporal` (`fit_correlation_lengths`). The state is the
pose error (6) and the bias (6).

Conventions (those of the node's covariance, core/covariance_transport.py): poses world_from_cam with
positions in metres; a pose error is (ε, δ), p = p̄ + ε and R = exp(δ) R̄, δ a rotation vector about the
fixed world axes; covariances are 6x6 over (x, y, z, rot X, rot Y, rot Z), m² and rad². An odometry
increment is cam_prev_from_cam with its noise ξ = (ρ, φ) a right perturbation in the current camera
frame (Δ̃ = Δ exp(ξ)): translation ρ in metres, rotation φ in radians.

Odometry noise (`OdometryNoise`) is a random walk in distance travelled: after d metres of the robot
base the position error has standard deviation `position_m` √(d / 1 m) per axis and the rotation error
`rotation_deg` √(d / 1 m) per axis, the "drift of 2% and 1°/m" of a wheel odometry being
position_m = 0.02, rotation_deg = 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from posenet_ros.core.covariance_transport import skew
from posenet_ros.core.geometry import matrix_to_quat, quat_exp, quat_log, quat_multiply, quat_to_matrix

CHI2_6_999 = 22.458  # 99.9% quantile of the chi-squared distribution with 6 degrees of freedom
MIN_VARIANCE = 1e-12  # added to variances the model makes exactly 0 (no motion: no odometry noise)


@dataclass(frozen=True)
class OdometryNoise:
    """The odometry's error per metre travelled by the robot base (see the module docstring)."""

    position_m: float = 0.02
    rotation_deg: float = 1.0

    def __post_init__(self) -> None:
        if not (self.position_m >= 0 and self.rotation_deg >= 0 and math.isfinite(self.position_m)
                and math.isfinite(self.rotation_deg)):
            raise ValueError(f"odometry noise must be finite and >= 0, got position {self.position_m} m, "
                             f"rotation {self.rotation_deg}° per metre")

    def base_covariance(self, base_prev_from_base: np.ndarray) -> np.ndarray:
        """Covariance (6, 6) of the right perturbation (ρ, φ) of one base increment (4x4, metres)."""
        distance = float(np.linalg.norm(base_prev_from_base[:3, 3]))
        return np.diag([self.position_m**2 * distance] * 3
                       + [math.radians(self.rotation_deg)**2 * distance] * 3) + MIN_VARIANCE * np.eye(6)


def se3_adjoint(a_from_b: np.ndarray) -> np.ndarray:
    """Adjoint (6, 6) of a_from_b (4x4) for perturbations ordered (translation, rotation):
    a_from_b · exp(ξ) = exp(Ad ξ) · a_from_b."""
    rotation, translation = a_from_b[:3, :3], a_from_b[:3, 3]
    adjoint = np.zeros((6, 6))
    adjoint[:3, :3] = adjoint[3:, 3:] = rotation
    adjoint[:3, 3:] = skew(translation) @ rotation
    return adjoint


@dataclass(frozen=True)
class OdometryIncrement:
    """The camera's motion between two frames from odometry: cam_prev_from_cam (4x4, metres) and the
    covariance (6, 6) of its right perturbation in the current camera frame."""

    cam_prev_from_cam: np.ndarray
    covariance_66: np.ndarray

    @classmethod
    def from_base(cls, odom_from_base_prev: np.ndarray, odom_from_base: np.ndarray, base_from_cam: np.ndarray,
                  noise: OdometryNoise) -> OdometryIncrement:
        """The camera increment of a base that moved from odom_from_base_prev to odom_from_base (4x4,
        odometry frame), the camera mounted at base_from_cam."""
        base_increment = np.linalg.inv(odom_from_base_prev) @ odom_from_base
        cam_from_base = np.linalg.inv(base_from_cam)
        # B⁻¹ Δ exp(ξ) B = (B⁻¹ Δ B) exp(Ad(B⁻¹) ξ)
        adjoint = se3_adjoint(cam_from_base)
        covariance = adjoint @ noise.base_covariance(base_increment) @ adjoint.T
        return cls(cam_from_base @ base_increment @ base_from_cam, 0.5 * (covariance + covariance.T))


@dataclass(frozen=True)
class RobotOdometry:
    """The robot's odometry at one frame: odom_from_base (4x4, metres, the odometry frame) at the
    frame's stamp, and the camera's mount base_from_cam (4x4)."""

    odom_from_base: np.ndarray
    base_from_cam: np.ndarray


@dataclass(frozen=True)
class LearnedMotion:
    """The temporal model's estimate of the motion into this frame: the world-frame translation (3,
    metres) and rotation vector (3, radians, world axes; R = exp(r) R_prev), and its variances (6,)."""

    translation_3: np.ndarray
    rotation_3: np.ndarray
    variance_6: np.ndarray


@dataclass
class FusionParameters:
    """The filter's model of the per-frame errors (stored with the temporal model in the checkpoint).

    `bias_share` β: the share of each per-frame variance that is a slowly varying bias (the rest is
    white); `correlation_length_m`: per axis (x, y, z, rot X, rot Y, rot Z) the distance travelled over
    which the bias correlation falls to 1/e; `learned_motion_std`: per axis the standard deviation of the
    learned motion's error per frame (metres, radians), used when odometry is missing."""

    bias_share: float = 0.8
    correlation_length_m: list[float] = field(default_factory=lambda: [1.0] * 6)
    learned_motion_std: list[float] = field(default_factory=lambda: [0.05] * 3 + [math.radians(2.0)] * 3)

    def __post_init__(self) -> None:
        if not 0.0 <= self.bias_share < 1.0:
            raise ValueError(f"bias_share must be in [0, 1), got {self.bias_share}")
        if len(self.correlation_length_m) != 6 or len(self.learned_motion_std) != 6:
            raise ValueError("correlation_length_m and learned_motion_std need 6 values (x y z rx ry rz)")
        if min(self.correlation_length_m) <= 0 or min(self.learned_motion_std) < 0:
            raise ValueError("correlation lengths must be > 0 and motion standard deviations >= 0")


@dataclass
class FusedPose:
    """One frame's output: position_3 (metres), quat_4 (unit wxyz, w >= 0), covariance_66, and
    whether the per-frame pose was used (False: rejected by the innovation gate)."""

    position_3: np.ndarray
    quat_4: np.ndarray
    covariance_66: np.ndarray
    measurement_used: bool


@dataclass(frozen=True)
class FilterState:
    """The filter's state (`OdometryFusion.snapshot`): the pose estimate (position_3 metres, None
    before the first frame; rotation_33), the bias estimate (6) and its standard deviations at the
    last frame (6), the 12x12 covariance of (pose error, bias), and the gate's rejection count."""

    position_3: np.ndarray | None
    rotation_33: np.ndarray
    bias_6: np.ndarray
    covariance_1212: np.ndarray
    bias_std_6: np.ndarray
    rejections: int


def _canonical(quat_4: np.ndarray) -> np.ndarray:
    return -quat_4 if quat_4[0] < 0 else quat_4


class OdometryFusion:
    """The filter over one stream of frames (`update` per frame, in time order)."""

    def __init__(self, parameters: FusionParameters, max_rejections: int = 5) -> None:
        self.parameters = parameters
        self.max_rejections = max_rejections
        self._lengths = np.asarray(parameters.correlation_length_m, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next frame starts it from its per-frame pose."""
        self._position: np.ndarray | None = None
        self._rotation = np.eye(3)
        self._bias = np.zeros(6)
        self._covariance = np.zeros((12, 12))
        self._bias_std = np.zeros(6)
        self._rejections = 0

    @property
    def started(self) -> bool:
        return self._position is not None

    def snapshot(self) -> FilterState:
        """A copy of the filter's state, to `restore` later."""
        position = None if self._position is None else self._position.copy()
        return FilterState(position, self._rotation.copy(), self._bias.copy(), self._covariance.copy(),
                           self._bias_std.copy(), self._rejections)

    def restore(self, state: FilterState) -> None:
        """Go back to a `snapshot` (copied, so a snapshot can be restored more than once)."""
        self._position = None if state.position_3 is None else state.position_3.copy()
        self._rotation, self._bias = state.rotation_33.copy(), state.bias_6.copy()
        self._covariance, self._bias_std = state.covariance_1212.copy(), state.bias_std_6.copy()
        self._rejections = state.rejections

    def _bias_model(self, covariance_66: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bias standard deviations (6,), white noise covariance (6, 6)) of a per-frame covariance."""
        share = self.parameters.bias_share
        variance = np.clip(np.diag(covariance_66), MIN_VARIANCE, None)
        white = (1.0 - share) * covariance_66 + MIN_VARIANCE * np.eye(6)
        return np.sqrt(share * variance), white

    def _start(self, position_3: np.ndarray, quat_4: np.ndarray, covariance_66: np.ndarray) -> FusedPose:
        bias_std, white = self._bias_model(covariance_66)
        self._position, self._rotation = position_3.copy(), quat_to_matrix(quat_4)
        self._bias, self._bias_std = np.zeros(6), bias_std
        # x = z - b - v with b ~ N(0, diag(σ_b²)): the state starts correlated with the bias
        bias_covariance = np.diag(bias_std**2)
        self._covariance = np.block([[bias_covariance + white, -bias_covariance],
                                     [-bias_covariance, bias_covariance]])
        self._rejections = 0
        return self._output(True)

    def _predict(self, motion: OdometryIncrement | LearnedMotion, bias_std_now: np.ndarray) -> None:
        assert self._position is not None
        transition, noise = np.eye(12), np.zeros((12, 12))
        if isinstance(motion, OdometryIncrement):
            step = self._rotation @ motion.cam_prev_from_cam[:3, 3]
            new_rotation = self._rotation @ motion.cam_prev_from_cam[:3, :3]
            transition[:3, 3:6] = -skew(step)
            # a right perturbation in the new camera frame is (R ρ, R φ) in this convention
            rotate = np.kron(np.eye(2), new_rotation)
            noise[:6, :6] = rotate @ motion.covariance_66 @ rotate.T
        else:
            step = np.asarray(motion.translation_3, dtype=np.float64)
            new_rotation = quat_to_matrix(quat_exp(motion.rotation_3)) @ self._rotation
            noise[:6, :6] = np.diag(np.asarray(motion.variance_6, dtype=np.float64) + MIN_VARIANCE)
        distance = float(np.linalg.norm(step))
        correlation = np.exp(-distance / self._lengths)
        # normalised AR(1): b_t / σ_t = ρ b_{t-1} / σ_{t-1} + √(1 - ρ²) w
        carry = correlation * bias_std_now / self._bias_std
        transition[6:, 6:] = np.diag(carry)
        noise[6:, 6:] = np.diag(bias_std_now**2 * (1.0 - correlation**2) + MIN_VARIANCE)
        self._position, self._rotation = self._position + step, new_rotation
        self._bias = carry * self._bias
        self._bias_std = bias_std_now
        self._covariance = transition @ self._covariance @ transition.T + noise

    def update(self, position_3: np.ndarray, quat_4: np.ndarray, covariance_66: np.ndarray,
               motion: OdometryIncrement | LearnedMotion | None) -> FusedPose:
        """Fuse the next frame: its per-frame pose (position_3 metres, quat_4 wxyz) and covariance
        (6, 6), and the motion since the previous frame (ignored on the first frame; None: no motion
        known, the stream restarts from this frame)."""
        position_3 = np.asarray(position_3, dtype=np.float64)
        quat_4 = _canonical(np.asarray(quat_4, dtype=np.float64))
        covariance_66 = np.asarray(covariance_66, dtype=np.float64)
        if self._position is None or motion is None:
            return self._start(position_3, quat_4, covariance_66)
        bias_std, white = self._bias_model(covariance_66)
        self._predict(motion, bias_std)
        assert self._position is not None
        rotation_error = quat_log(_canonical(quat_multiply(quat_4, matrix_to_quat(self._rotation.T))))
        innovation = np.concatenate([position_3 - self._position, rotation_error]) - self._bias
        observe = np.hstack([np.eye(6), np.eye(6)])
        innovation_covariance = observe @ self._covariance @ observe.T + white
        if float(innovation @ np.linalg.solve(innovation_covariance, innovation)) > CHI2_6_999:
            self._rejections += 1
            if self._rejections > self.max_rejections:  # the filter lost the track: start again
                return self._start(position_3, quat_4, covariance_66)
            return self._output(False)
        self._rejections = 0
        gain = np.linalg.solve(innovation_covariance, observe @ self._covariance).T
        correction = gain @ innovation
        self._position = self._position + correction[:3]
        self._rotation = quat_to_matrix(quat_exp(correction[3:6])) @ self._rotation
        self._bias = self._bias + correction[6:]
        # Joseph form: stays symmetric positive definite
        keep = np.eye(12) - gain @ observe
        self._covariance = keep @ self._covariance @ keep.T + gain @ white @ gain.T
        return self._output(True)

    def _output(self, used: bool) -> FusedPose:
        assert self._position is not None
        covariance = 0.5 * (self._covariance[:6, :6] + self._covariance[:6, :6].T)
        return FusedPose(self._position.copy(), _canonical(matrix_to_quat(self._rotation)), covariance, used)


def fit_correlation_lengths(errors: Sequence[np.ndarray], covariances: Sequence[np.ndarray],
                            steps_m: Sequence[np.ndarray], shortest_m: float = 0.05,
                            longest_m: float = 20.0) -> list[float]:
    """Per axis the bias correlation length (metres travelled) of per-frame errors on held-out
    sequences: errors (T, 6) in the module's convention, their covariances (T, 6, 6) and the camera's
    translation between consecutive frames (T - 1,) metres, one entry per sequence. The lag-1
    correlation ρ of the normalised errors e_i / √C_ii over the mean step s gives L = -s / ln ρ (ρ
    clamped to [0.01, 0.99], L to [shortest_m, longest_m])."""
    products, squares, steps = [], [], []
    for error, covariance, step in zip(errors, covariances, steps_m, strict=True):
        if len(error) < 2:
            continue
        normalised = error / np.sqrt(np.clip(np.diagonal(covariance, axis1=1, axis2=2), MIN_VARIANCE, None))
        products.append(normalised[1:] * normalised[:-1])
        squares.append(normalised**2)
        steps.append(np.asarray(step, dtype=np.float64))
    if not products:
        raise ValueError("fitting correlation lengths needs a sequence of at least two frames")
    correlation = np.concatenate(products).mean(0) / np.concatenate(squares).mean(0)
    lengths = -float(np.concatenate(steps).mean()) / np.log(np.clip(correlation, 0.01, 0.99))
    return [float(x) for x in np.clip(lengths, shortest_m, longest_m)]
