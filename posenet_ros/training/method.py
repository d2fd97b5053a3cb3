"""What the training loop (train.py) asks of a method, and the helpers the methods share.

A method (pose regression, scene coordinates) gives the loop its network, the module whose forward
returns the loss of a batch, the training dataset, the loss used in each epoch and what runs after the
last epoch. train.py picks the method by the configuration's `method` name and branches on nothing
else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from posenet_ros.core.camera import FrameTransform
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.images import record_camera, record_depth
from posenet_ros.runtime.train_config import TrainConfig


@dataclass
class TrainingSetup:
    """A method's network, the module the loop trains (`forward(batch, loss_kind, points)` ->
    (loss, dict of logged terms); it holds the network and the loss's own parameters), the training
    dataset, and the parameters trained without weight decay at `loss.weights_lr`."""

    model: nn.Module
    step: nn.Module
    dataset: PoseDataset
    no_decay: list[nn.Parameter] = field(default_factory=list)


class TrainingMethod(ABC):
    """The training side of a relocalization method (module docstring)."""

    name: ClassVar[str]

    @abstractmethod
    def setup(self, config: TrainConfig, records: list[FrameRecord], position_mean_3: np.ndarray,
              position_scale_m: float, *, cache_dir: Path | None = None, progress: bool = False
              ) -> TrainingSetup:
        """The network (with the scene statistics of the training cameras' positions, metres), its
        step module and the training dataset (decoded once into a cache in `cache_dir` unless None;
        only the images the method uses: depth when it reads depth). Raises DatasetError for data the
        method cannot use."""

    @abstractmethod
    def with_depth(self, config: TrainConfig) -> TrainConfig:
        """`config` with each frame's depth in use (`posenet-ros train --use-depth`)."""

    @abstractmethod
    def loss_kind(self, config: TrainConfig, epoch: int) -> str:
        """The loss of `epoch` (0-based), logged and given to the step module."""

    def start_epoch(self, model: nn.Module) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Called after `model.train()` at the start of every epoch."""

    def check_epoch(self, config: TrainConfig, epoch: int, row: dict) -> dict:
        """After each epoch, with its metrics row (mean logged terms): entries to add to the row, e.g.
        what the method finds wrong with the training (and warns about)."""
        return {}

    def finish(self, model: nn.Module, records: list[FrameRecord], config: TrainConfig, device: torch.device,
               main_process: bool, progress: bool = False) -> dict[str, float]:
        """After the last epoch, before validation and saving, in every process (`main_process`: rank
        0): what the method fits on the finished network (`progress`: show its progress). Returns
        entries for the metrics row."""
        return {}


def train_transform(config: TrainConfig) -> FrameTransform:
    """Random crops and colour jitter; evaluation uses `evaluation.eval_transform` (centre crop)."""
    data = config.data
    return FrameTransform(resize=data.resize, crop=data.crop, random_crop=True, brightness=data.brightness,
                          contrast=data.contrast, saturation=data.saturation, hue=data.hue,
                          depth_holes=data.depth_holes if config.model.needs_depth else 0.0,
                          rotation_deg=data.rotation_deg, zoom=data.zoom)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _sampled_depths(records: Sequence[FrameRecord], frames: int) -> list[np.ndarray]:
    """The depth images (metres) of up to `frames` evenly spaced records, as training reads them."""
    chosen = np.unique(np.linspace(0, len(records) - 1, min(frames, len(records))).round().astype(int))
    return [record_depth(records[index], record_camera(records[index])) for index in chosen]


def median_depth(records: Sequence[FrameRecord], frames: int = 64) -> float:
    """The median valid depth (metres) over up to `frames` evenly spaced records: an RGB-D model's
    depth normalisation (`PoseNet.set_depth_scale`)."""
    depths = _sampled_depths(records, frames)
    values = [depth[np.isfinite(depth) & (depth > 0)] for depth in depths]
    valid = np.concatenate(values)
    if not len(valid):
        raise DatasetError(f"the depth images of the training frames have no valid pixel (checked "
                           f"{len(depths)})")
    return float(np.median(valid))


MIN_VALID_DEPTH_SHARE = 0.05  # below this share of valid pixels a depth image counts as empty


def missing_depth(records: Sequence[FrameRecord], frames: int = 8) -> str:
    """Why the training frames have no usable depth, or "" when they have: every record needs a depth
    image, and up to `frames` evenly spaced ones must each have at least `MIN_VALID_DEPTH_SHARE` of
    their pixels valid (finite, > 0), so zero-filled depth images count as none."""
    missing = sum(record.depth_path is None for record in records)
    if missing:
        return f"{missing} of the {len(records)} training frames have no depth image"
    shares = [float(np.mean(np.isfinite(depth) & (depth > 0))) for depth in _sampled_depths(records, frames)]
    if min(shares) < MIN_VALID_DEPTH_SHARE:
        return (f"the depth images are empty (valid pixels in {len(shares)} sampled training frames: "
                f"{100 * min(shares):.1f}% to {100 * max(shares):.1f}%, less than "
                f"{100 * MIN_VALID_DEPTH_SHARE:.0f}% in some)")
    return ""


def training_autocast(config: TrainConfig, device: torch.device) -> torch.autocast:
    """bfloat16 autocast of the training steps: `amp` on CUDA, `cpu_amp` on the CPU."""
    enabled = config.amp if device.type == "cuda" else config.cpu_amp and device.type == "cpu"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
