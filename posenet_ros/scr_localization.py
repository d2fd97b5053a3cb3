"""Scene coordinate regression at test time: network forward, then one RANSAC pose per frame.

`localize` runs the network on a batch and `scr_pose.solve_pose` on each frame's cells (with the
frame's depth points when the solver uses depth). The loop-closure score of a frame is 1 - inlier
ratio (0 when every cell agrees with the pose; a place the network has not learned gives scattered
coordinates and few inliers).
"""

from __future__ import annotations

import numpy as np
import torch

from posenet_ros.data.frames import Intrinsics
from posenet_ros.models.scene_coordinates import SceneCoordinateNet, cell_pixels
from posenet_ros.scr_losses import depth_targets
from posenet_ros.scr_pose import PoseSolveError, RansacConfig, ScrPose, solve_pose


def input_intrinsics(camera: Intrinsics, width: int, height: int, new_width: int, new_height: int,
                     x0: int, y0: int, crop_width: int, crop_height: int) -> np.ndarray:
    """K (3x3) of the network input made from a `width` x `height` image of the checkpoint's camera
    (its intrinsics scaled to that size, as for a lower or higher resolution stream of the same
    camera), resized to `new_width` x `new_height` and cropped at (x0, y0)."""
    scaled = camera.resized(width, height).resized(new_width, new_height)
    return scaled.cropped(x0, y0, crop_width, crop_height).matrix()


def _cells(values_B3hw: torch.Tensor) -> np.ndarray:
    """(B, 3, h, w) -> float64 (B, h * w, 3) on the host, cells in row-major order."""
    return values_B3hw.permute(0, 2, 3, 1).reshape(len(values_B3hw), -1, 3).cpu().numpy().astype(np.float64)


def localize(model: SceneCoordinateNet, images_B3HW: torch.Tensor, K_B33: np.ndarray | torch.Tensor,
             ransac: RansacConfig, seed: int = 0,
             depth_B1HW: torch.Tensor | None = None) -> tuple[list[ScrPose | None], np.ndarray]:
    """(one ScrPose per frame, None where no pose was found; coords_BN3 in metres, map frame, the
    network's scene coordinates of every cell in row-major cell order). `depth_B1HW`: the frames'
    depth at the input's size (metres; 0, NaN, inf invalid) for the RGB-D solver (`ransac.use_depth`);
    None solves by PnP. Frame b's RANSAC is seeded by seed + b."""
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
            poses.append(solve_pose(coords_BN3[b], pixels, K[b], ransac, seed=seed + b,
                                    points_cam_N3=points_cam_BN3[b]))
        except PoseSolveError:
            poses.append(None)
    return poses, coords_BN3
