"""Pose regression losses of Kendall & Cipolla (CVPR 2017), selectable by `LossConfig.kind`.

Positions enter the losses normalised by the scene statistics the model keeps
(`x_n = (x - position_mean) / position_scale`), so `beta` and the learned weights do not depend on the
scene's size. Orientations are unit quaternions (w, x, y, z); q and -q are the same rotation, so the
orientation term is min(||q - q̂||, ||q + q̂||) with q̂ normalised.

- `linear`:      Lx + beta * Lq
- `learned`:     Lx * exp(-ŝx) + ŝx + Lq * exp(-ŝq) + ŝq, with ŝx, ŝq learnable (homoscedastic task
                 uncertainty); initial values as in the paper (0 and -3), clamped to at most
                 `max_s_x`, `max_s_q` so that neither term can be weighted away.
- `reprojection`: the mean robust norm of the pixel distance between scene points projected with the
                 true and with the predicted pose (points from depth, or any point set seen by the
                 image). Alone from scratch it did not converge in the paper: train with `learned`
                 first (`TrainConfig.reprojection_after_epochs`).
- `aleatoric`:   the heteroscedastic Gaussian negative log-likelihood (Kendall & Gal 2017) of the
                 normalised position error and of the rotation error (the rotation vector δ with
                 q̂ = exp(δ) q, radians about the world axes), with the log-variances the model predicts
                 (`model.aleatoric`): Σ_k ½ e_k² exp(-s_k) + ½ s_k, isotropic (one s for the position,
                 one for the rotation) or per axis. The model bounds its log-variances
                 (`ModelConfig.max_sigma_position`, `max_sigma_rotation_deg`), so no component can be
                 given up by inflating its variance; `warmup_epochs` train with `linear` first.

A model with aleatoric outputs trained with another kind learns its log-variances with the same
likelihood on the detached errors, so they are calibrated to the pose head without changing it.
"""

from __future__ import annotations

import torch
from torch import nn

from posenet_ros.core.geometry import (
    pose_from_position_quat_torch,
    pose_invert_torch,
    project_points_torch,
    quat_conjugate_torch,
    quat_log_torch,
    quat_multiply_torch,
    transform_points_torch,
)
from posenet_ros.runtime.train_config import LossConfig, LossKind


def quaternion_distance(q_true_B4: torch.Tensor, q_pred_B4: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """min(||q - q̂/|q̂| ||, ||q + q̂/|q̂| ||) per row (B,): q and -q are the same rotation."""
    q_pred_B4 = q_pred_B4 / q_pred_B4.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return torch.minimum(_norm(q_true_B4 - q_pred_B4, norm), _norm(q_true_B4 + q_pred_B4, norm))


def _norm(diff: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "l1":
        return diff.abs().sum(-1)
    # Euclidean norm with a finite gradient at zero.
    return (diff.pow(2).sum(-1) + 1e-12).sqrt()


class PoseLoss(nn.Module):
    """The configured loss; holds ŝx and ŝq as parameters (they only receive gradients for `learned`).

    forward(...) returns (loss scalar, dict of detached terms for logging).
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config
        self.s_x = nn.Parameter(torch.tensor(float(config.init_s_x)))
        self.s_q = nn.Parameter(torch.tensor(float(config.init_s_q)))

    def forward(self, position_norm_pred_B3: torch.Tensor, quat_pred_B4: torch.Tensor,
                position_norm_true_B3: torch.Tensor, quat_true_B4: torch.Tensor,
                kind: LossKind | None = None, *, reprojection_inputs: dict | None = None,
                log_var_BK: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """`kind` overrides the configured kind (the training schedule switches to reprojection).

        `reprojection_inputs` (needed for `reprojection`): `world_from_cam_true_B44`,
        `position_pred_B3` (metres), `points_cam_BN3` (scene points in the true camera frame, metres),
        `valid_BN` (bool), `K_B33`. `log_var_BK`: the model's aleatoric log-variances (K = 2 or 6),
        needed for `aleatoric`.
        """
        kind = kind or self.config.kind
        cfg = self.config
        l_x = _norm(position_norm_pred_B3 - position_norm_true_B3, cfg.norm).mean()
        l_q = quaternion_distance(quat_true_B4, quat_pred_B4, cfg.norm).mean()
        s_x, s_q = self.weights()
        terms = {"l_x": float(l_x.detach()), "l_q": float(l_q.detach()),
                 "s_x": float(s_x.detach()), "s_q": float(s_q.detach()),
                 **squared_component_errors(position_norm_pred_B3, quat_pred_B4, position_norm_true_B3,
                                            quat_true_B4)}
        if kind == "linear":
            loss = l_x + cfg.beta * l_q
        elif kind == "learned":
            loss = l_x * torch.exp(-s_x) + s_x + l_q * torch.exp(-s_q) + s_q
        elif kind == "reprojection":
            if reprojection_inputs is None:
                raise ValueError("the reprojection loss needs scene points (depth or a point set)")
            loss = reprojection_loss(quat_pred_B4=quat_pred_B4, config=cfg, **reprojection_inputs)
            terms["l_reproj_px"] = float(loss.detach())
        elif kind == "aleatoric":
            if log_var_BK is None:
                raise ValueError("loss.kind 'aleatoric' needs a model with aleatoric outputs "
                                 "(model.aleatoric: isotropic or per_axis)")
            loss = aleatoric_nll(position_norm_pred_B3, quat_pred_B4, position_norm_true_B3, quat_true_B4,
                                 log_var_BK)
        else:
            raise ValueError(f"unknown loss kind {kind!r}; choose linear, learned, reprojection or aleatoric")
        if log_var_BK is not None:
            if kind != "aleatoric":
                loss = loss + aleatoric_nll(position_norm_pred_B3.detach(), quat_pred_B4.detach(),
                                            position_norm_true_B3, quat_true_B4, log_var_BK)
            terms["log_var_position"] = float(log_var_BK[:, : log_var_BK.shape[1] // 2].detach().mean())
            terms["log_var_rotation"] = float(log_var_BK[:, log_var_BK.shape[1] // 2:].detach().mean())
        return loss, terms

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ŝx, ŝq as the `learned` loss uses them, first projected onto their ceilings `max_s_x`,
        `max_s_q` (in place: projected gradient descent, so a weight held at its ceiling still gets
        gradients and comes down as soon as its loss term falls; a clamp in the graph would stop them)."""
        with torch.no_grad():
            self.s_x.clamp_(max=self.config.max_s_x)
            self.s_q.clamp_(max=self.config.max_s_q)
        return self.s_x, self.s_q


COMPONENTS = ("x", "y", "z", "rot_x", "rot_y", "rot_z")


def squared_component_errors(position_norm_pred_B3: torch.Tensor, quat_pred_B4: torch.Tensor,
                             position_norm_true_B3: torch.Tensor, quat_true_B4: torch.Tensor
                             ) -> dict[str, float]:
    """Batch means of the squared error of each pose component, keyed `sq_err_<component>`: the
    normalised position axes and the rotation error vector's axes (rad², world axes)."""
    with torch.no_grad():
        errors_B6 = torch.cat([position_norm_pred_B3 - position_norm_true_B3,
                               rotation_error_vector(quat_pred_B4.float(), quat_true_B4.float())], dim=-1)
        means = errors_B6.float().pow(2).mean(dim=0).tolist()
    return {f"sq_err_{name}": value for name, value in zip(COMPONENTS, means, strict=True)}


def rotation_error_vector(quat_pred_B4: torch.Tensor, quat_true_B4: torch.Tensor) -> torch.Tensor:
    """δ_B3 (radians, world axes) with q̂ = exp(δ) q: log(q̂ q⁻¹), the shortest rotation."""
    relative = quat_multiply_torch(quat_pred_B4, quat_conjugate_torch(quat_true_B4))
    return quat_log_torch(torch.where(relative[..., :1] < 0, -relative, relative))


def aleatoric_nll(position_norm_pred_B3: torch.Tensor, quat_pred_B4: torch.Tensor,
                  position_norm_true_B3: torch.Tensor, quat_true_B4: torch.Tensor,
                  log_var_BK: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of Σ_k ½ e_k² exp(-s_k) + ½ s_k (Gaussian NLL up to a constant).

    e = (normalised position error (3), rotation error vector (3, radians)); s = log_var_BK with
    K = 6 (per axis) or K = 2 (isotropic: s_position for the three position axes, s_rotation for
    the three rotation axes). Log-variances are clamped to [-20, 20] to keep exp finite.
    """
    errors_B6 = torch.cat([position_norm_pred_B3 - position_norm_true_B3,
                           rotation_error_vector(quat_pred_B4, quat_true_B4)], dim=-1)
    log_var = log_var_BK.clamp(-20.0, 20.0)
    if log_var.shape[-1] == 2:
        log_var = log_var.repeat_interleave(3, dim=-1)
    elif log_var.shape[-1] != 6:
        raise ValueError(f"log_var_BK must have 2 or 6 columns, got {log_var.shape[-1]}")
    return (0.5 * errors_B6.pow(2) * torch.exp(-log_var) + 0.5 * log_var).sum(-1).mean()


def reprojection_loss(world_from_cam_true_B44: torch.Tensor, position_pred_B3: torch.Tensor,
                      quat_pred_B4: torch.Tensor, points_cam_BN3: torch.Tensor, valid_BN: torch.Tensor,
                      K_B33: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """Mean over valid points of γ(||π(true pose, g) - π(predicted pose, g)||) in pixels.

    The points' true projections are computed from `points_cam_BN3` directly; the predicted ones by
    moving the points to the world with the true pose and back into the predicted camera.
    """
    world_from_pred = pose_from_position_quat_torch(position_pred_B3, quat_pred_B4)
    pred_from_true = pose_invert_torch(world_from_pred) @ world_from_cam_true_B44
    points_pred_BN3 = transform_points_torch(pred_from_true, points_cam_BN3)
    # Clamp depth so points behind the predicted camera give large but finite errors.
    z = points_pred_BN3[..., 2:].clamp_min(config.min_depth)
    points_pred_BN3 = torch.cat([points_pred_BN3[..., :2], z], dim=-1)
    uv_true, _ = project_points_torch(points_cam_BN3, K_B33)
    uv_pred, _ = project_points_torch(points_pred_BN3, K_B33)
    error_px = ((uv_true - uv_pred).pow(2).sum(-1) + 1e-12).sqrt().clamp_max(config.reprojection_clip_px)
    if config.reprojection_robust == "l1":
        robust = error_px
    elif config.reprojection_robust == "l2":
        robust = error_px.pow(2)
    else:
        delta = config.reprojection_huber_px
        robust = torch.where(error_px < delta, 0.5 * error_px.pow(2) / delta, error_px - 0.5 * delta)
    weights = valid_BN.to(robust.dtype)
    return (robust * weights).sum() / weights.sum().clamp_min(1.0)


def sample_depth_points(depth_B1HW: torch.Tensor, K_B33: torch.Tensor, count: int,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `count` pixels with valid depth per image and back-project them.

    Returns points_cam_BN3 (metres, camera frame; rows of images with fewer valid pixels repeat
    points) and valid_BN (False where an image has no valid depth at all).
    """
    batch, _, _, width = depth_B1HW.shape
    depth_BP = depth_B1HW.reshape(batch, -1)
    valid_BP = torch.isfinite(depth_BP) & (depth_BP > 0)
    # Random scores, invalid pixels last: the top `count` are a uniform sample of the valid ones.
    scores = torch.rand(depth_BP.shape, generator=generator, device=depth_BP.device)
    scores = torch.where(valid_BP, scores, torch.full_like(scores, -1.0))
    index_BN = scores.topk(min(count, depth_BP.shape[1]), dim=1).indices
    valid_BN = valid_BP.gather(1, index_BN)
    z = depth_BP.gather(1, index_BN).where(valid_BN, torch.ones_like(valid_BN, dtype=depth_BP.dtype))
    u = (index_BN % width).to(z.dtype)
    v = torch.div(index_BN, width, rounding_mode="floor").to(z.dtype)
    fx, fy = K_B33[:, 0, 0, None], K_B33[:, 1, 1, None]
    cx, cy = K_B33[:, 0, 2, None], K_B33[:, 1, 2, None]
    points = torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], dim=-1)
    return points, valid_BN
