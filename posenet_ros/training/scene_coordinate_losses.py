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
    batch, _, rows, cols = coords_B3hw.shape
    pixels_hw2 = cell_pixels(image_height, image_width, coords_B3hw.device)
    image_N = torch.arange(batch, device=coords_B3hw.device).repeat_interleave(rows * cols)
    return cell_reprojection_loss(coords_B3hw.permute(0, 2, 3, 1).reshape(-1, 3),
                                  pixels_hw2.reshape(1, -1, 2).expand(batch, -1, -1).reshape(-1, 2),
                                  image_N, K_B33, world_from_cam_B44, config)


def cell_reprojection_loss(coords_N3: torch.Tensor, pixels_N2: torch.Tensor, image_N: torch.Tensor,
                           K_I33: torch.Tensor, world_from_cam_I44: torch.Tensor,
                           config: ScrLossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """`reprojection_loss` of N independent cells: coordinates (metres, map frame), the (u, v) pixel of
    each cell and the index of its image into the images' intrinsics and true poses (I images). The
    ACE-style head refit trains on such cells, shuffled across images, when there is no depth."""
    rotation, translation = world_from_cam_I44[image_N, :3, :3], world_from_cam_I44[image_N, :3, 3]
    points_cam = torch.einsum("nji,nj->ni", rotation, coords_N3 - translation)
    z = points_cam[:, 2]
    K = K_I33[image_N]
    focal, centre = torch.stack([K[:, 0, 0], K[:, 1, 1]], dim=-1), K[:, :2, 2]
    projected = focal * points_cam[:, :2] / z.clamp_min(config.min_depth)[:, None] + centre
    error = (projected - pixels_N2).norm(dim=-1)
    valid = (z > config.min_depth) & (error < config.max_px)
    robust = torch.where(error < config.robust_px, error,
                         torch.sqrt(config.robust_px * error.clamp_min(config.robust_px)))
    ray = torch.cat([(pixels_N2 - centre) / focal, torch.ones_like(z)[:, None]], dim=-1)
    pull = (points_cam - ray * config.prior_depth).norm(dim=-1)
    loss = torch.where(valid, robust, pull).mean()
    return loss, valid.float().mean()
