"""The loop-closure flag: "have I seen this place before?" from epistemic uncertainty, with hysteresis.

The score of a frame is `uncertainty.loop_closure_score`, the log of the last layer's epistemic
variance in feature space: low where the network has seen similar images, high in unseen places and
under heavy occlusion (see uncertainty.py for why it replaced the Monte-Carlo dropout spread).
A raw threshold on the score flickers, so the
flag has hysteresis: it turns on after `min_frames` consecutive frames with score <= `enter_score`
and off after `min_frames` consecutive frames with score > `leave_score` (enter <= leave). A
non-finite score counts as unknown.

Thresholds are calibrated on frames of mapped places (`calibrate_thresholds`): `enter_score` is a
percentile of their scores (most in-map frames qualify) and `leave_score` a higher one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass
class LoopClosureConfig:
    enter_score: float = math.inf  # known once scores stay <= this (inf: every finite score)
    leave_score: float = math.inf  # unknown once scores stay > this
    min_frames: int = 3  # consecutive frames needed to switch the flag

    def __post_init__(self) -> None:
        if self.min_frames < 1:
            raise ValueError("loop closure min_frames must be >= 1")
        if not self.enter_score <= self.leave_score:
            raise ValueError(f"loop closure enter_score ({self.enter_score}) must be <= leave_score "
                             f"({self.leave_score})")


class LoopClosureDetector:
    """Hysteresis over per-frame scores of one stream of frames; `update(score) -> known_place`."""

    def __init__(self, config: LoopClosureConfig) -> None:
        self.config = config
        self.known = False
        self._streak = 0

    def reset(self) -> None:
        """Forget the history (a new sequence, or the stream was interrupted)."""
        self.known = False
        self._streak = 0

    def update(self, score: float) -> bool:
        """Feed the next frame's score; returns the flag after it."""
        cfg = self.config
        finite = math.isfinite(score)
        switching = (finite and score <= cfg.enter_score) if not self.known else not (
            finite and score <= cfg.leave_score)
        self._streak = self._streak + 1 if switching else 0
        if self._streak >= cfg.min_frames:
            self.known = not self.known
            self._streak = 0
        return self.known


def run_detector(config: LoopClosureConfig, scores_N: ArrayLike, sequences: list[str]) -> np.ndarray:
    """The flag of every frame, each sequence in order from a fresh detector (frames grouped by
    `sequences`, in the given order within each)."""
    scores = np.asarray(scores_N, dtype=np.float64)
    flags = np.zeros(len(scores), dtype=bool)
    detectors: dict[str, LoopClosureDetector] = {}
    for i, (score, sequence) in enumerate(zip(scores, sequences, strict=True)):
        detector = detectors.setdefault(sequence, LoopClosureDetector(config))
        flags[i] = detector.update(float(score))
    return flags


def calibrate_thresholds(in_map_scores_N: ArrayLike, enter_percentile: float = 90.0,
                         leave_percentile: float = 99.0, min_frames: int = 3) -> LoopClosureConfig:
    """Thresholds from scores of frames in mapped places (a validation split): `enter_score` at
    `enter_percentile` of them, `leave_score` at `leave_percentile`."""
    scores = np.asarray(in_map_scores_N, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("loop-closure calibration needs finite scores of in-map frames (mc_samples > 0)")
    if not 0 < enter_percentile <= leave_percentile <= 100:
        raise ValueError("need 0 < enter_percentile <= leave_percentile <= 100")
    return LoopClosureConfig(enter_score=float(np.percentile(scores, enter_percentile)),
                             leave_score=float(np.percentile(scores, leave_percentile)),
                             min_frames=min_frames)


def roc_auc(scores_known_N: ArrayLike, scores_unknown_M: ArrayLike) -> float:
    """Probability that an unknown-place frame scores higher than a known-place one (ties count
    half): the area under the ROC curve of the score as a detector of unknown places."""
    known = np.asarray(scores_known_N, dtype=np.float64)
    unknown = np.asarray(scores_unknown_M, dtype=np.float64)
    if known.size == 0 or unknown.size == 0:
        raise ValueError("ROC AUC needs frames of both known and unknown places")
    known = np.nan_to_num(known, nan=np.inf)
    unknown = np.nan_to_num(unknown, nan=np.inf)
    greater = (unknown[:, None] > known[None, :]).sum()
    ties = (unknown[:, None] == known[None, :]).sum()
    return float((greater + 0.5 * ties) / (known.size * unknown.size))
