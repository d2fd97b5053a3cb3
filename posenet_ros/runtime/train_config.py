"""The training configuration a checkpoint stores and is rebuilt from (`TrainConfig`), as typed
dataclasses: `load_model` reads it strictly (`core.config.config_from_dict`: unknown keys and wrong
types are errors), and every layer above reads its fields rather than string keys.

Units: image sizes in pixels, depths and distances in metres, times in seconds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

from posenet_ros.core.camera import FrameTransform
from posenet_ros.inference.pose_solving import RansacConfig
from posenet_ros.models.posenet import ModelConfig
from posenet_ros.models.scene_coordinates import SceneCoordinateConfig

LossKind = Literal["linear", "learned", "reprojection", "aleatoric"]


@dataclass
class LossConfig:
    kind: LossKind = "learned"
    beta: float = 10.0  # linear sum: weight of the quaternion term (positions normalised)
    norm: Literal["l1", "l2"] = "l2"  # norm of the position and quaternion differences
    init_s_x: float = 0.0  # learned weighting: initial ŝx (log variance of the position term)
    init_s_q: float = -3.0  # learned weighting: initial ŝq
    weights_lr: float = 0.01  # learning rate of ŝx, ŝq: they must track the loss terms within a short run
    reprojection_points: int = 256  # points sampled from each image's depth
    reprojection_robust: Literal["l1", "huber", "l2"] = "huber"  # the robust norm γ, on pixels
    reprojection_huber_px: float = 5.0  # huber: quadratic below, linear above (pixels)
    reprojection_clip_px: float = 100.0  # per-point pixel error cap, so wrong early guesses stay bounded
    min_depth: float = 0.05  # metres; points closer to (or behind) the predicted camera are clamped
    # learned weighting: ceilings of ŝx and ŝq (log of the loss term a component may be left at): ŝx
    # <= log 1 (the mean-position error in normalised units), ŝq <= log 0.17 (a 20° quaternion distance)
    max_s_x: float = 0.0
    max_s_q: float = -1.75
    # aleatoric: the first epochs train the pose with `linear` (the log-variances learn beside it on the
    # detached errors), so the likelihood starts from poses that already follow every component;
    # None: a quarter of the epochs
    warmup_epochs: int | None = None
    # From this share of the epochs on, a pose component (x, y, z, rot x, rot y, rot z) whose RMS training
    # error is above `chance_ratio` x that of always answering the mean pose is reported as not learned
    # (a warning in the log and `not_learned` in metrics.csv)
    chance_ratio: float = 0.7


@dataclass
class ScrLossConfig:
    kind: Literal["auto", "depth", "reprojection"] = "auto"  # auto: depth when the data has it
    robust_px: float = 10.0
    max_px: float = 100.0
    min_depth: float = 0.1  # metres
    prior_depth: float = 2.0  # metres, the ray point invalid predictions are pulled to

    def __post_init__(self) -> None:
        if not (self.robust_px > 0 and self.max_px > self.robust_px and self.min_depth > 0
                and self.prior_depth > self.min_depth):
            raise ValueError("scr_loss needs 0 < robust_px < max_px and 0 < min_depth < prior_depth")


SPLIT_TIMES_FORMAT = "SPLIT=START:END[,SPLIT=START:END ...] in seconds since the bag's first image"


@dataclass(frozen=True)
class BagDataConfig:
    """How frames are read from a rosbag2 (`data/bag_dataset.py` explains each choice). Empty strings:
    the defaults."""

    image_topic: str = ""  # "": /camera/image_raw, else .../compressed, else the only image topic
    gt_topic: str = ""  # "": /ground_truth/pose (unless gt_tf)
    gt_tf: str = ""  # "PARENT CHILD": ground truth from this /tf transform instead of gt_topic
    max_gap_s: float = 0.1  # longest gap between ground-truth poses to interpolate across (s)
    use_depth: bool = False  # read depth images (the reprojection loss needs them)
    depth_topic: str = ""  # "": /camera/depth/image_raw
    split_times: str = ""  # "train=0:120,test=120:180" (s since the first image); "": whole bag

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_gap_s) and self.max_gap_s > 0):
            raise ValueError(f"bag max_gap_s must be a positive number of seconds, got {self.max_gap_s}")
        if self.gt_tf and len(self.gt_tf.split()) != 2:
            raise ValueError(f"bag gt_tf must be 'PARENT CHILD' (two frame names), got {self.gt_tf!r}")
        if self.gt_tf and self.gt_topic:
            raise ValueError(f"bag gt_topic ({self.gt_topic!r}) and gt_tf ({self.gt_tf!r}) are both set; "
                             "choose one source of ground truth")
        self.ranges()  # raises for a malformed split_times

    def tf_pair(self) -> tuple[str, str] | None:
        """(parent, child) of `gt_tf`, or None."""
        if not self.gt_tf:
            return None
        parent, child = self.gt_tf.split()
        return parent, child

    def ranges(self) -> dict[str, list[tuple[float, float]]]:
        """split -> [(start_s, end_s), ...] of `split_times` (end may be inf); {} without ranges."""
        ranges: dict[str, list[tuple[float, float]]] = {}
        for item in (part.strip() for part in self.split_times.split(",")):
            if not item:
                continue
            name, equals, span = item.partition("=")
            start_text, colon, end_text = span.partition(":")
            if not equals or not colon or not name.strip():
                raise ValueError(f"bag split_times item {item!r} is not {SPLIT_TIMES_FORMAT}, "
                                 "e.g. train=0:120,test=120:")
            try:
                start = float(start_text) if start_text.strip() else 0.0
                end = float(end_text) if end_text.strip() else math.inf
            except ValueError:
                raise ValueError(f"bag split_times item {item!r}: START and END must be numbers of "
                                 "seconds") from None
            if not 0.0 <= start < end:
                raise ValueError(f"bag split_times item {item!r}: need 0 <= START < END")
            ranges.setdefault(name.strip(), []).append((start, end))
        return ranges


VALIDATION_BLOCKS_SPLIT = "blocks"
"""`data.val_split` value: validate on whole time blocks held out of the training split's sequences
(`data.splits.validation_split`); training then uses the other frames."""


@dataclass
class DataConfig:
    train_split: str = "train"
    # validated after every epoch and what `calibrate` fits on: "blocks" = whole time blocks held out of
    # the training split's sequences (never the test split), "" = no validation, else a named split
    val_split: str = VALIDATION_BLOCKS_SPLIT
    resize: int = 256  # shorter image side (PoseNet: 256)
    crop: int | tuple[int, int] | None = 224  # side or (height, width): random for training, centre for
    # evaluation; None: the whole resized image
    brightness: float = 0.0  # colour jitter amounts (0 = off)
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    depth_holes: float = 0.3  # RGB-D models: largest share of depth pixels made holes per training frame
    # the camera rolled by up to rotation_deg degrees and zoomed by up to 1 + zoom (or 1 / (1 + zoom)),
    # the image, depth, K and pose changed with it (core/camera.py FrameTransform; 0 = off)
    rotation_deg: float = 0.0
    zoom: float = 0.0
    skip_bad: bool = False  # skip (and count) bad frames instead of stopping
    # DataLoader worker processes (decoding and augmentation beside the training step); 0: in the training
    # process, as fast on 2 CPU cores with the decode cache (docs/results.md); more help where cores are free
    workers: int = 0
    cache: bool = True  # decode every training frame once into a memory-mapped cache (data/cache.py)
    cache_dir: str = ""  # where the cache goes; "": <training output>/cache
    # What the metric defaults' 1 m is in the data's length unit: 1 for metric data; for captures of
    # arbitrary scale (frame records with metric=False: COLMAP, NeRF) training derives it from the data
    # (training/scale.py) and scales the metric defaults it did not get explicitly by it
    unit_scale: float = 1.0
    bag: BagDataConfig = field(default_factory=BagDataConfig)  # topics, ground truth and split time
    # ranges when the data root is a rosbag2


@dataclass
class ScrRefitConfig:
    """Method scr, after the last epoch (ACE-style, Brachmann et al. CVPR 2023): the encoder and the
    head's first (3x3) convolution are frozen, their features of every training cell are buffered
    (no augmentation) and the head's 1x1 convolutions are trained on batches of cells shuffled across
    all images. Much faster per sample than end-to-end steps and without their correlated batches."""

    iterations: int = 0  # 0: no refit
    batch_cells: int = 4096
    lr: float = 3e-3  # AdamW, 2% linear warm-up then cosine to 0
    max_cells: int = 2_000_000  # buffer cap (float16 features); more cells are subsampled per image

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.batch_cells < 1 or not self.lr > 0 or self.max_cells < 1:
            raise ValueError("scr_refit needs iterations >= 0, batch_cells >= 1, lr > 0, max_cells >= 1")


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch's CPU threads for the training step (torch.set_num_threads); 0: `default_threads`, half the
    # cores this process may use less the DataLoader workers, at least 1 (docs/results.md)
    threads: int = 0
    amp: bool = True  # bfloat16 autocast on CUDA
    # bfloat16 autocast on the CPU too (training steps and the scr head refit): about 1.9x faster on
    # CPUs with AVX512-BF16 or AMX, slower on others, so off by default
    cpu_amp: bool = False
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    reprojection_after_epochs: int | None = None  # the seed's schedule: `loss.kind` first, then reprojection
    # From this epoch (0-based) on, batch norm uses and keeps its running statistics (eval mode), the ones
    # the model is evaluated with; with small batches the per-batch statistics differ from them (None:
    # never; the reprojection epochs always do)
    batchnorm_frozen_after: int | None = None
    pretrained: str | None = None  # backbone weights (.safetensors, torchvision key names)
    method: Literal["posenet", "scr"] = "posenet"  # pose regression, or scene coordinates + RANSAC
    model: ModelConfig = field(default_factory=ModelConfig)  # posenet
    loss: LossConfig = field(default_factory=LossConfig)  # posenet
    scr: SceneCoordinateConfig = field(default_factory=SceneCoordinateConfig)  # scr: the network
    scr_loss: ScrLossConfig = field(default_factory=ScrLossConfig)  # scr: training targets
    ransac: RansacConfig = field(default_factory=RansacConfig)  # scr: the pose solver
    scr_refit: ScrRefitConfig = field(default_factory=ScrRefitConfig)  # scr: head refit on shuffled cells
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if self.threads < 0 or self.data.workers < 0:
            raise ValueError(f"threads and data.workers must be >= 0, got {self.threads} and "
                             f"{self.data.workers}")
        if any(value is not None and value < 0 for value in (self.reprojection_after_epochs,
                                                              self.batchnorm_frozen_after)):
            raise ValueError("reprojection_after_epochs and batchnorm_frozen_after must be >= 0")
        if self.loss.kind == "aleatoric" and self.model.aleatoric == "none":
            raise ValueError("loss.kind 'aleatoric' needs model.aleatoric 'isotropic' or 'per_axis'")
        if not self.data.unit_scale > 0:
            raise ValueError(f"data.unit_scale must be a positive number of data units per metre, got "
                             f"{self.data.unit_scale}")
        if (self.loss.warmup_epochs is not None and self.loss.warmup_epochs < 0) \
                or not 0 < self.loss.chance_ratio <= 1:
            raise ValueError("loss.warmup_epochs must be >= 0 and loss.chance_ratio in (0, 1]")

    def warmup_epochs(self) -> int:
        """The aleatoric loss's warm-up epochs (`loss.warmup_epochs`; None: a quarter of `epochs`)."""
        warmup = self.loss.warmup_epochs
        return self.epochs // 4 if warmup is None else warmup

    def torch_threads(self) -> int:
        """The number of torch CPU threads `threads` asks for (0: `default_threads(data.workers)`)."""
        return self.threads or default_threads(self.data.workers)

    def eval_transform(self) -> FrameTransform:
        """How a frame becomes the network's input at test time: `data.resize` (shorter side, px) and a
        centre crop of `data.crop` (px), no jitter. Training uses the same sizes with a random crop."""
        return FrameTransform(resize=self.data.resize, crop=self.data.crop, random_crop=False)


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask; all cores where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """torch threads beside `workers` DataLoader processes: half of the available cores less the
    workers, at least 1. On a shared machine torch's threads wait on each other whenever another
    process holds a core, which costs far more than one thread too few (figures in docs/results.md
    "Training throughput"); set `threads` on a dedicated machine."""
    return max(1, (available_cpus() - workers) // 2)
