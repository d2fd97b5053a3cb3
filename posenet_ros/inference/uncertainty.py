"""Pose uncertainty: Monte-Carlo dropout samples -> a mean pose and a calibrated 6x6 covariance.

Epistemic uncertainty comes from Monte-Carlo dropout (Bayesian PoseNet, Kendall & Cipolla ICRA 2016):
N stochastic forward passes, done as one batched pass. In the default `head` mode the backbone runs
once per frame and only the layers after the head dropout are sampled, over N copies of the pooled
features; `full` mode samples the whole network (the model needs `backbone_dropout` > 0), also as one
batch of N copies of each image. Aleatoric uncertainty is the model's predicted log-variances
(Kendall & Gal 2017), averaged over the samples.

Conventions of the 6x6 covariance (those of geometry_msgs/PoseWithCovariance): rows and columns are
(x, y, z, rot X, rot Y, rot Z); positions in metres in the world (map) frame; rotations in radians as
a rotation vector δ about the fixed world axes, perturbing the mean orientation on the left:
world_from_cam = exp(δ) · mean. Total covariance = (epistemic + aleatoric), then scaled per block by
the calibration: the position block by f_p = `position_scale` · exp(`position_novelty` · (score -
`score_reference`)), the rotation block likewise by f_r, the cross terms by √(f_p f_r), which keeps it
positive semi-definite. The novelty factor grows the covariance with the loop-closure score below
(the frame's distance from the training images in feature space): Monte-Carlo dropout barely changes
between mapped and unseen views, while the actual error does (see calibration.py).

The loop-closure score of a frame is the log of the last layer's epistemic variance,
log(φᵀ C φ), with φ the frame's features (the regressors' input) and C = (ΦᵀΦ + λI)⁻¹ the posterior
covariance of a Bayesian linear model fitted on the training frames' features Φ
(`fit_feature_covariance`, stored in the model): low where the network has seen similar images, high
in unseen places and under heavy occlusion. On the synthetic scene the Monte-Carlo dropout spread
does not separate unseen places from mapped ones (ROC AUC about 0.5, see the uncertainty issue's
notes), so it is kept only as a diagnostic (`mc_spread_B`); the feature-space variance does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from posenet_ros.core.geometry import (
    quat_average_torch,
    quat_conjugate_torch,
    quat_log_torch,
    quat_multiply_torch,
)
from posenet_ros.models.posenet import PoseNet

McMode = Literal["head", "full"]
NOVELTY_EXPONENT_CAP = 50.0  # |exponent| of the novelty factor is clamped here: finite covariances


@dataclass
class UncertaintyConfig:
    """How a checkpoint's uncertainty is computed and scaled (stored in the checkpoint)."""

    mc_samples: int = 32  # Monte-Carlo dropout samples per frame; 0 = deterministic, no epistemic term
    mc_mode: McMode = "head"  # head: backbone once, head sampled; full: the whole network sampled
    position_scale: float = 1.0  # calibration: multiplies the position block of the covariance
    rotation_scale: float = 1.0  # calibration: multiplies the rotation block
    position_novelty: float = 0.0  # calibration: position block x exp(this x (score - score_reference))
    rotation_novelty: float = 0.0  # calibration: the same for the rotation block
    score_reference: float = 0.0  # loop-closure score at which the novelty factor is 1
    seed: int = 0  # base seed of the dropout masks (per frame: seed + frame seed)

    def __post_init__(self) -> None:
        if self.mc_samples < 0 or self.mc_samples == 1:
            raise ValueError("mc_samples must be 0 (deterministic) or at least 2")
        if self.mc_mode not in ("head", "full"):
            raise ValueError(f"mc_mode must be 'head' or 'full', got {self.mc_mode!r}")
        if not (self.position_scale > 0 and self.rotation_scale > 0):
            raise ValueError("calibration scales must be positive")
        if not (self.position_novelty >= 0 and self.rotation_novelty >= 0):
            raise ValueError("calibration novelty exponents must be >= 0 (uncertainty grows with novelty)")
        if not math.isfinite(self.score_reference):
            raise ValueError("calibration score_reference must be finite")

    def block_factors(self, score_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_position_B, f_rotation_B): the calibration's multiplier of each block per frame, float64.
        A frame without a finite score (no feature memory) gets the scales alone."""
        offset = torch.nan_to_num(score_B.to(torch.float64) - self.score_reference, nan=0.0,
                                  posinf=NOVELTY_EXPONENT_CAP, neginf=-NOVELTY_EXPONENT_CAP)
        return tuple(scale * torch.exp((novelty * offset).clamp(-NOVELTY_EXPONENT_CAP, NOVELTY_EXPONENT_CAP))
                     for scale, novelty in ((self.position_scale, self.position_novelty),
                                            (self.rotation_scale, self.rotation_novelty)))


@dataclass
class PoseSamples:
    """Monte-Carlo samples for B frames: position_BN3 (metres, world), quat_BN4 (unit, w >= 0,
    world_from_cam), log_var_BNK (the model's aleatoric log-variances, or None), features_BF."""

    position_BN3: torch.Tensor
    quat_BN4: torch.Tensor
    log_var_BNK: torch.Tensor | None
    features_BF: torch.Tensor | None = None  # deterministic features (dropout off), for the score


@dataclass
class PoseDistribution:
    """Per-frame pose estimates with uncertainty (B frames, float64, on the model's device).

    position_B3 (metres) and quat_B4 (unit, w >= 0) of world_from_cam; covariance_B66 the calibrated
    total; epistemic_B66 and aleatoric_B66 the uncalibrated parts; score_B the loop-closure score
    (NaN when the model has no fitted feature covariance); mc_spread_B the log Monte-Carlo spread
    log(trace(Σ_pos) / s² + trace(Σ_rot)) (s: the scene position scale; -inf without sampling).
    """

    position_B3: torch.Tensor
    quat_B4: torch.Tensor
    covariance_B66: torch.Tensor
    epistemic_B66: torch.Tensor
    aleatoric_B66: torch.Tensor
    score_B: torch.Tensor
    mc_spread_B: torch.Tensor
    features_BF: torch.Tensor | None = None  # the head's input with dropout off (temporal smoothing)


SamplingNetwork = Callable[[torch.Tensor, torch.Tensor],
                           tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]
"""(images_BCHW, masks_BNF) -> (features_BF, position_M3, quat_M4, log_var_MK or None), M = B * N rows
(image-major): `PoseNet.forward_samples` as plain tensors. The PyTorch model (`torch_network`), an
exported TorchScript or ONNX file (export.py) and a captured CUDA graph (cuda_graphs.py) all are one."""


def torch_network(model: PoseNet) -> SamplingNetwork:
    """The model's `forward_samples` as a SamplingNetwork (its dropout must be off)."""
    def run(images_BCHW: torch.Tensor, masks_BNF: torch.Tensor):
        features, output = model.forward_samples(images_BCHW, masks_BNF)
        return features, output.position_B3, output.quat_B4, output.log_var_BK
    return run


def head_dropout_masks(batch: int, samples: int, features: int, p: float, seed: int,
                       device: torch.device) -> torch.Tensor:
    """The head's dropout masks (batch, samples, features) on `device`, scaled by 1 / (1 - p), drawn
    on the CPU from a generator seeded with `seed` (the global RNG is untouched): equal seeds give equal
    masks on every device and in every runtime. All ones for one sample (the deterministic head) or
    p = 0."""
    if samples == 1 or p == 0.0:
        return torch.ones(batch, samples, features, device=device)
    keep = 1.0 - p
    generator = torch.Generator().manual_seed(seed)
    masks = torch.bernoulli(torch.full((batch, samples, features), keep), generator=generator).div_(keep)
    return masks.to(device, non_blocking=True)


def sample_poses(model: PoseNet, images_BCHW: torch.Tensor, samples: int, *, mode: McMode = "head",
                 seed: int = 0, network: SamplingNetwork | None = None) -> PoseSamples:
    """`samples` Monte-Carlo dropout passes over `images_BCHW` (the model's input: RGB in [0, 1], then
    depth for RGB-D models) as one batched forward.

    "head" mode: the backbone once, the head over the features times `head_dropout_masks` (through
    `network`, default the model itself). "full" mode: the whole model over `samples` copies of each
    image with every dropout on. The dropout masks depend only on `seed` (the global RNG state is left
    as it was), so equal seeds give equal samples. The model's dropout mode is restored afterwards.
    Call under `torch.inference_mode()` for speed.
    """
    if samples < 2:
        raise ValueError(f"Monte-Carlo dropout needs at least 2 samples, got {samples}")
    if mode == "head":
        return _head_samples(model, images_BCHW, samples, seed, network)
    if model.config.backbone_dropout <= 0:
        raise ValueError("mc_mode 'full' samples the backbone's dropout, but this model has "
                         "backbone_dropout = 0; use mc_mode 'head' or train with model.backbone_dropout > 0")
    batch = images_BCHW.shape[0]
    previous_mode = model.dropout_mode
    devices = [images_BCHW.device] if images_BCHW.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model.set_dropout_mode("off")
            features = model.forward_features(images_BCHW)
            model.set_dropout_mode("mc")
            output = model(images_BCHW.repeat_interleave(samples, dim=0))
    finally:
        model.set_dropout_mode(previous_mode)
    log_var = output.log_var_BK
    return PoseSamples(
        position_BN3=output.position_B3.reshape(batch, samples, 3),
        quat_BN4=output.quat_B4.reshape(batch, samples, 4),
        log_var_BNK=None if log_var is None else log_var.reshape(batch, samples, -1),
        features_BF=features,
    )


def _head_samples(model: PoseNet, images_BCHW: torch.Tensor, samples: int, seed: int,
                  network: SamplingNetwork | None) -> PoseSamples:
    """Head sampling with explicit masks (one sample: the deterministic head)."""
    batch = images_BCHW.shape[0]
    masks = head_dropout_masks(batch, samples, model.head_dim, model.config.dropout, seed,
                               images_BCHW.device)
    previous_mode = model.dropout_mode
    try:
        model.set_dropout_mode("off")
        features, position, quat, log_var = (network or torch_network(model))(images_BCHW, masks)
    finally:
        model.set_dropout_mode(previous_mode)
    return PoseSamples(
        position_BN3=position.reshape(batch, samples, 3),
        quat_BN4=quat.reshape(batch, samples, 4),
        log_var_BNK=None if log_var is None else log_var.reshape(batch, samples, -1),
        features_BF=features,
    )


def rotation_deviations(quat_BN4: torch.Tensor, mean_B4: torch.Tensor) -> torch.Tensor:
    """δ_BN3 (radians, fixed world axes) with q_i = exp(δ_i) · mean: log(q_i · mean⁻¹)."""
    relative = quat_multiply_torch(quat_BN4, quat_conjugate_torch(mean_B4)[:, None, :])
    return quat_log_torch(torch.where(relative[..., :1] < 0, -relative, relative))


def aleatoric_covariance(log_var_BNK: torch.Tensor | None, position_scale_m: float, batch: int,
                         dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Diagonal aleatoric covariance (B, 6, 6): the mean over samples of exp(log-variance).

    The model predicts log-variances of normalised positions (metres / `position_scale_m`) and of
    rotation vectors (radians); K = 2 (isotropic: position, rotation) or 6 (x, y, z, rx, ry, rz).
    """
    if log_var_BNK is None:
        return torch.zeros(batch, 6, 6, dtype=dtype, device=device)
    variance = log_var_BNK.to(dtype).clamp(-30.0, 30.0).exp().mean(dim=1)
    if variance.shape[-1] == 2:
        variance = variance.repeat_interleave(3, dim=-1)
    scale = torch.tensor([position_scale_m**2] * 3 + [1.0] * 3, dtype=dtype, device=device)
    return torch.diag_embed(variance * scale)


def calibrated(covariance_B66: torch.Tensor, position_factor: float | torch.Tensor,
               rotation_factor: float | torch.Tensor) -> torch.Tensor:
    """Scale the position block by `position_factor`, the rotation block by `rotation_factor` (numbers,
    or one per frame, shape (B,)) and the cross terms by their geometric mean (D Σ D with
    D = diag(√fp I, √fr I): stays PSD)."""
    def root(factor: float | torch.Tensor) -> torch.Tensor:
        factor = torch.as_tensor(factor, dtype=covariance_B66.dtype, device=covariance_B66.device)
        return factor.sqrt().reshape(-1, 1).expand(-1, 3)

    position, rotation = root(position_factor), root(rotation_factor)
    d_B6 = torch.cat(torch.broadcast_tensors(position, rotation), dim=-1)
    return covariance_B66 * d_B6[:, :, None] * d_B6[:, None, :]


def summarise(samples: PoseSamples, position_scale_m: float, config: UncertaintyConfig,
              feature_covariance_FF: torch.Tensor | None = None,
              score_B: torch.Tensor | None = None) -> PoseDistribution:
    """Mean pose, covariances and loop-closure score of Monte-Carlo samples, in float64. One sample
    (N = 1, the deterministic head) has no epistemic term (zeros, `mc_spread_B` -inf).

    `position_scale_m`: the model's scene position scale (`model.position_scale`, metres);
    `feature_covariance_FF`: the model's `feature_covariance` (None: score NaN); `score_B`: the
    loop-closure score when it is already computed (then the covariance is not used).
    """
    position = samples.position_BN3.to(torch.float64)
    quat = samples.quat_BN4.to(torch.float64)
    batch, count = position.shape[:2]
    mean_position = position.mean(dim=1)
    if count == 1:
        mean_quat = quat[:, 0]
        epistemic = torch.zeros(batch, 6, 6, dtype=torch.float64, device=position.device)
    else:
        mean_quat = quat_average_torch(quat)
        deviations_BN6 = torch.cat([position - mean_position[:, None], rotation_deviations(quat, mean_quat)],
                                   -1)
        epistemic = deviations_BN6.transpose(1, 2) @ deviations_BN6 / (count - 1)
    aleatoric = aleatoric_covariance(samples.log_var_BNK, position_scale_m, batch, torch.float64,
                                     position.device)
    score = (loop_closure_score(samples.features_BF, feature_covariance_FF, batch) if score_B is None
             else score_B.to(torch.float64))
    covariance = calibrated(epistemic + aleatoric, *config.block_factors(score))
    return PoseDistribution(position_B3=mean_position, quat_B4=mean_quat, covariance_B66=covariance,
                            epistemic_B66=epistemic, aleatoric_B66=aleatoric, score_B=score,
                            mc_spread_B=(mc_spread(epistemic, position_scale_m) if count > 1 else
                                         torch.full((batch,), -math.inf, dtype=torch.float64,
                                                    device=position.device)),
                            features_BF=samples.features_BF)


def mc_spread(epistemic_B66: torch.Tensor, position_scale_m: float) -> torch.Tensor:
    """log(trace(Σ_pos) / s² + trace(Σ_rot)): the Monte-Carlo spread in scene-normalised units."""
    diagonal = torch.diagonal(epistemic_B66, dim1=-2, dim2=-1)
    spread = diagonal[:, :3].sum(-1) / position_scale_m**2 + diagonal[:, 3:].sum(-1)
    return torch.log(spread.clamp_min(0.0))


def loop_closure_score(features_BF: torch.Tensor | None, feature_covariance_FF: torch.Tensor | None,
                       batch: int) -> torch.Tensor:
    """log(φᵀ C φ) per frame (float64); NaN when C is missing or not fitted (all zeros). Stays on the
    features' device without a host synchronisation."""
    if features_BF is None or feature_covariance_FF is None:
        device = features_BF.device if features_BF is not None else None
        return torch.full((batch,), math.nan, dtype=torch.float64, device=device)
    phi = features_BF.to(torch.float64)
    covariance = feature_covariance_FF.to(torch.float64)
    variance = ((phi @ covariance) * phi).sum(-1)
    fitted = covariance.abs().sum() > 0
    return torch.where(fitted, torch.log(variance.clamp_min(1e-300)), torch.full_like(variance, math.nan))


def fit_feature_covariance(features_NF: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """C = (ΦᵀΦ + λI)⁻¹ (float32, F x F) of the training frames' features Φ (N, F), with
    λ = `ridge` x trace(ΦᵀΦ) / F, so the prior is relative to the features' scale."""
    phi = features_NF.to(torch.float64)
    gram = phi.T @ phi
    dim = gram.shape[0]
    lam = ridge * float(torch.trace(gram)) / dim
    if not lam > 0:
        raise ValueError("cannot fit the feature covariance: the training features are all zero")
    eye = torch.eye(dim, dtype=torch.float64, device=gram.device)
    return torch.linalg.inv(gram + lam * eye).to(torch.float32)


def estimate(model: PoseNet, images_BCHW: torch.Tensor, config: UncertaintyConfig, seed: int = 0,
             network: SamplingNetwork | None = None) -> PoseDistribution:
    """Pose and uncertainty of each image: Monte-Carlo dropout with `config.mc_samples`, or the
    deterministic head (0: the pose, the aleatoric covariance only and the loop-closure score).
    `network` replaces the model's own forward in head mode (an exported file or a CUDA graph)."""
    if config.mc_samples > 0 and config.mc_mode == "full":
        samples = sample_poses(model, images_BCHW, config.mc_samples, mode="full", seed=config.seed + seed)
    else:
        samples = _head_samples(model, images_BCHW, max(config.mc_samples, 1), config.seed + seed, network)
    return summarise(samples, float(model.position_scale), config, model.feature_covariance)
