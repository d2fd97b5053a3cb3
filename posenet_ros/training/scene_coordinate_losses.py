"""Training targets and losses of scene coordinate regression (models/scene_coordinates.py).

- With depth (the seed: labels from RGB-D and the camera pose, as KinectFusion gives them): the
  target of each cell is its pixel's depth back-projected and moved into the map frame with the true
  `world_from_cam`; the loss is the mean Euclidean distance (metres) over cells with valid depth.
- Without depth (DSAC*, ACE): the reprojection error (pixels) of the predicted coordinate under the
  true pose, robust above `robust_px` (e -> sqrt(robust_px * e)). Predictions that are behind the
  camera (closer than `min_depth`) or reproject more than `max_px` away are pulled instead towards the
  point on the cell's ray at `prior_depth` metres (in metres), so that they become valid.
"""

from __future__ import annotations

import torch

from posenet_ros.inference.scene_coordinates import cell_rays
from posenet_ros.models.scene_coordinates import cell_pixels
from posenet_ros.runtime.train_config import ScrLossConfig


def depth_loss(coords_B3hw: torch.Tensor, targets_B3hw: torch.Tensor,
               valid_Bhw: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance (metres) of predictions to targets over valid cells."""
    distance = (coords_B3hw - targets_B3hw).norm(dim=1)
    return (distance * valid_Bhw).sum() / valid_Bhw.sum().clamp_min(1)


def reprojection_loss(coords_B3hw: torch.Tensor, K_B33: torch.Tensor, world_from_cam_B44: torch.Tensor,
                      image_height: int, image_width: int,
                      config: ScrLossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, share of valid cells) of the network's output for images of image_height x image_width
    px: the robust reprojection error of valid predictions (pixels) plus, for the others, the distance
    (metres) to the ray point at `prior_depth`."""
    pixels = cell_pixels(image_height, image_width, coords_B3hw.device)
    rotation, translation = world_from_cam_B44[:, :3, :3], world_from_cam_B44[:, :3, 3]
    points_world = coords_B3hw.permute(0, 2, 3, 1)
    points_cam = torch.einsum("bji,bhwj->bhwi", rotation, points_world - translation[:, None, None])
    z = points_cam[..., 2]
    normalised = points_cam[..., :2] / z.clamp_min(config.min_depth)[..., None]
    focal = torch.stack([K_B33[:, 0, 0], K_B33[:, 1, 1]], dim=-1).view(-1, 1, 1, 2)
    centre = K_B33[:, :2, 2].view(-1, 1, 1, 2)
    projected = focal * normalised + centre
    error = (projected - pixels).norm(dim=-1)
    valid = (z > config.min_depth) & (error < config.max_px)
    robust = torch.where(error < config.robust_px, error,
                         torch.sqrt(config.robust_px * error.clamp_min(config.robust_px)))
    prior_cam = cell_rays(K_B33, pixels) * config.prior_depth
    pull = (points_cam - prior_cam).norm(dim=-1)
    loss = torch.where(valid, robust, pull).mean()
    return loss, valid.float().mean()
