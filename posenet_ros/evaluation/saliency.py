"""Saliency maps of a pose regression network: where in the image the pose comes from (the gradient
of the network's pose outputs with respect to the input pixels), and `posenet-ros saliency`, which
writes them over dataset frames as PNG files (atomically).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.atomic_io import atomic_write_bytes
from posenet_ros.core.device import resolve_device
from posenet_ros.data.bag_dataset import bag_config_for_checkpoint
from posenet_ros.data.dataset import PoseDataset, network_input
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.plots import figure_png
from posenet_ros.models.posenet import PoseNet
from posenet_ros.runtime.checkpoint import load_model
from posenet_ros.runtime.methods import PoseRegression

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Saliency
# --------------------------------------------------------------------------------------------------


def saliency_maps(model: PoseNet, images_BCHW: torch.Tensor) -> torch.Tensor:
    """Gradient saliency (Simonyan et al.) of the pose output with respect to the input pixels.

    For each image, the gradient of the SUM of the seven pose outputs, the 3 normalised position
    outputs (`position_norm_B3`, scene-scale free) plus the 4 quaternion components, with respect to
    the input pixels (the model's input: RGB in [0, 1], then depth for RGB-D models); the map is the
    largest absolute gradient over the three colour channels: a float tensor (B, H, W) >= 0 on the
    images' device. The model runs in eval mode (batch norm uses its running statistics, so images do
    not interact and one backward pass serves the whole batch) with dropout off; its modes are
    restored afterwards. Parameter gradients (`.grad`) are left untouched.
    """
    if images_BCHW.ndim != 4 or images_BCHW.shape[1] != model.input_channels:
        raise ValueError(f"images must have shape (B, {model.input_channels}, H, W), got "
                         f"{tuple(images_BCHW.shape)}")
    with PoseRegression.evaluating_model(model), torch.inference_mode(False), torch.enable_grad():
        images = images_BCHW.detach().clone().requires_grad_(True)
        output = model(images)
        score = output.position_norm_B3.sum() + output.quat_B4.sum()
        (gradient,) = torch.autograd.grad(score, images)
    return gradient[:, :3].abs().amax(dim=1).detach()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "frame"


def _plot_saliency(image_3HW: np.ndarray, saliency_HW: np.ndarray, title: str) -> bytes:
    from matplotlib.figure import Figure

    rgb = np.clip(image_3HW.transpose(1, 2, 0), 0.0, 1.0)
    top = float(np.percentile(saliency_HW, 99.5))
    shown = np.clip(saliency_HW / top, 0.0, 1.0) if top > 0 else np.zeros_like(saliency_HW)
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_image, ax_map, ax_overlay = fig.subplots(1, 3)
    ax_image.imshow(rgb)
    ax_image.set_title("image")
    mappable = ax_map.imshow(shown, cmap="inferno", vmin=0.0, vmax=1.0)
    ax_map.set_title("saliency |d pose / d pixel|")
    fig.colorbar(mappable, ax=ax_map, fraction=0.046, pad=0.02, label="relative to 99.5th percentile")
    ax_overlay.imshow(rgb)
    ax_overlay.imshow(shown, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.6)
    ax_overlay.set_title("overlay")
    for ax in (ax_image, ax_map, ax_overlay):
        ax.set_axis_off()
    fig.suptitle(title)
    return figure_png(fig)


def write_saliency(model_path: str | Path, data_root: str | Path, *, split: str = "test",
                   frames: Sequence[int] | None = None, out: str | Path,
                   device: str | torch.device = "auto") -> list[Path]:
    """Write a saliency figure (image | saliency map | overlay) per chosen frame of a dataset split.

    `frames` are positions (0-based) in the split's frame list, in its order; default: 4 evenly
    spaced frames (all if fewer). A position outside 0..N-1 is a ValueError naming the valid range.
    Images are prepared with the checkpoint's `eval_transform`; a rosbag2 is read with the checkpoint's
    training bag options. Files are
    `out/saliency_<sequence>_<frame_index>.png`; returns their paths in the order of `frames`
    (repeated positions are written once).
    """
    out = Path(out)
    resolved_device = resolve_device(device)
    loaded = load_model(model_path, resolved_device)
    if not loaded.method_class.regresses_pose:
        raise ValueError(f"{loaded.path}: saliency maps are drawn for pose regression models, not method "
                         f"{loaded.method!r}")
    records = load_frames(data_root, split, bag=bag_config_for_checkpoint(loaded.config, loaded.needs_depth))
    count = len(records)
    if count == 0:
        raise ValueError(f"{data_root}: the {split!r} split has no frames")
    if frames is None:
        spaced = np.linspace(0, count - 1, min(4, count)).round().astype(np.int64)
        positions = sorted({int(x) for x in spaced})
    else:
        positions = list(dict.fromkeys(int(f) for f in frames))
        bad = [f for f in positions if not 0 <= f < count]
        if bad:
            raise ValueError(f"frame position(s) {bad} out of range: the {split!r} split of {data_root} has "
                             f"{count} frames, valid positions are 0..{count - 1}")
    dataset = PoseDataset(records, loaded.config.eval_transform(), with_depth=loaded.model.config.needs_depth)
    written = []
    for position in positions:
        item = dataset[position]
        image = item["image"]
        inputs = network_input(item, loaded.model.input_channels)[None].to(resolved_device)
        saliency = saliency_maps(loaded.model, inputs)[0].cpu().numpy()
        record = records[position]
        title = f"{record.sequence} frame {record.frame_index} (position {position} of {count})"
        path = out / f"saliency_{_safe_name(record.sequence)}_{record.frame_index}.png"
        atomic_write_bytes(path, _plot_saliency(image.numpy(), saliency, title))
        written.append(path)
    logger.info("wrote %d saliency figure(s) to %s", len(written), out)
    return written
