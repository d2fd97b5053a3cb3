"""Scene coordinate regression at test time: network forward, then one RANSAC pose per frame.

`localize` runs the network on a batch and `scr_pose.solve_pose` on each frame's cells (with the
frame's depth points when the solver uses depth). The loop-closure score of a frame is 1 - inlier
ratio (0 when every cell agrees with the pose; a place the network has not learned gives scattered
coordinates and few inliers).
"""

from __future__ import annotations

import numpy as np
import torch

from posenet_ros.inference.pose_solving import PoseSolveError, RansacConfig, ScrPose, solve_pose
from posenet_ros.models.scene_coordinates import SceneCoordinateNet, cell_pixels


def cell_rays(K_B33: torch.Tensor, pixels_hw2: torch.Tensor) -> torch.Tensor:
    """Camera-frame rays (B, h, w, 3) with z = 1 through the cell pixels."""
    fx, fy = K_B33[:, 0, 0].view(-1, 1, 1), K_B33[:, 1, 1].view(-1, 1, 1)
    cx, cy = K_B33[:, 0, 2].view(-1, 1, 1), K_B33[:, 1, 2].view(-1, 1, 1)
    x = (pixels_hw2[..., 0] - cx) / fx
    y = (pixels_hw2[..., 1] - cy) / fy
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def depth_targets(depth_B1HW: torch.Tensor, K_B33: torch.Tensor,
                  world_from_cam_B44: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets_B3hw in metres, map frame; valid_Bhw): each cell's pixel back-projected with its
    depth (metres; 0, NaN, inf invalid) and the true camera pose."""
    height, width = depth_B1HW.shape[-2:]
    pixels = cell_pixels(height, width, depth_B1HW.device)
    depth = depth_B1HW[:, 0][:, pixels[..., 1].long(), pixels[..., 0].long()]
    valid = torch.isfinite(depth) & (depth > 0)
    points_cam = cell_rays(K_B33, pixels) * torch.where(valid, depth, torch.zeros_like(depth))[..., None]
    points = torch.einsum("bij,bhwj->bhwi", world_from_cam_B44[:, :3, :3], points_cam)
    points = points + world_from_cam_B44[:, None, None, :3, 3]
    return points.permute(0, 3, 1, 2), valid


def _cells(values_B3hw: torch.Tensor) -> np.ndarray:
    """(B, 3, h, w) -> float64 (B, h * w, 3) on the host, cells in row-major order."""
    return values_B3hw.permute(0, 2, 3, 1).reshape(len(values_B3hw), -1, 3).cpu().numpy().astype(np.float64)


def localize(model: SceneCoordinateNet, images_B3HW: torch.Tensor, K_B33: np.ndarray | torch.Tensor,
             ransac: RansacConfig, seeds: list[int],
             depth_B1HW: torch.Tensor | None = None) -> tuple[list[ScrPose | None], np.ndarray]:
    """(one ScrPose per frame, None where no pose was found; coords_BN3 in metres, map frame, the
    network's scene coordinates of every cell in row-major cell order). `depth_B1HW`: the frames'
    depth at the input's size (metres; 0, NaN, inf invalid) for the RGB-D solver (`ransac.use_depth`);
    None solves by PnP. Frame b's RANSAC is seeded by seeds[b]."""
    with torch.inference_mode():
        coords = model(images_B3HW).float()
    height, width = images_B3HW.shape[-2:]
    pixels = cell_pixels(height, width).reshape(-1, 2).numpy()
    coords_BN3 = _cells(coords)
    K = np.asarray(K_B33.cpu() if torch.is_tensor(K_B33) else K_B33, np.float64)
    points_cam_BN3: list[np.ndarray | None] = [None] * len(coords_BN3)
    if depth_B1HW is not None and ransac.use_depth:
        identity = torch.eye(4, dtype=torch.float64).expand(len(coords_BN3), 4, 4)
        points, valid = depth_targets(depth_B1HW.double().cpu(), torch.from_numpy(K), identity)
        points_cam_BN3 = list(_cells(points.masked_fill(~valid[:, None], float("nan"))))
    poses: list[ScrPose | None] = []
    for b in range(len(coords_BN3)):
        try:
            poses.append(solve_pose(coords_BN3[b], pixels, K[b], ransac, seed=seeds[b],
                                    points_cam_N3=points_cam_BN3[b]))
        except PoseSolveError:
            poses.append(None)
    return poses, coords_BN3
