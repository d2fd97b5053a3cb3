"""inference/loop_closure.py: the hysteresis of the loop-closure flag, per-sequence runs, threshold
calibration and the ROC AUC of the score."""


import math

import numpy as np
import pytest

from posenet_ros.inference.loop_closure import (
    LoopClosureConfig,
    LoopClosureDetector,
    calibrate_thresholds,
    roc_auc,
    run_detector,
)


def test_loop_closure_hysteresis():
    detector = LoopClosureDetector(LoopClosureConfig(enter_score=0.0, leave_score=1.0, min_frames=3))
    scores = [-1, -1, 5, -1, -1, -1, 0.5, 0.5, 2, 2, 0.9, 2, 2, 2, -1]
    flags = [detector.update(s) for s in scores]
    assert flags == [False, False, False, False, False, True, True, True, True, True, True, True, True,
                     False, False]
    detector.reset()
    assert not detector.update(-5)
    nan_detector = LoopClosureDetector(LoopClosureConfig(enter_score=0.0, leave_score=1.0, min_frames=1))
    assert nan_detector.update(-1) and not nan_detector.update(float("nan"))
    # Sequences run independently.
    per_sequence = run_detector(LoopClosureConfig(0.0, 0.0, 2), [-1, -1, -1, -1], ["a", "b", "a", "b"])
    assert per_sequence.tolist() == [False, False, True, True]
    with pytest.raises(ValueError):
        LoopClosureConfig(enter_score=2.0, leave_score=1.0)


def test_threshold_calibration_and_roc_auc():
    config = calibrate_thresholds(np.arange(101.0), 90, 99, 2)
    assert (config.enter_score, config.leave_score, config.min_frames) == (90.0, 99.0, 2)
    assert roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    with pytest.raises(ValueError, match="finite"):
        calibrate_thresholds([float("inf")])


def _flags(config: LoopClosureConfig, scores: list[float]) -> list[bool]:
    detector = LoopClosureDetector(config)
    return [detector.update(score) for score in scores]


@pytest.mark.parametrize("min_frames", [1, 2, 3, 5])
def test_the_flag_turns_on_after_min_frames_in_a_row_at_or_below_enter_score(min_frames):
    config = LoopClosureConfig(enter_score=0.0, leave_score=1.0, min_frames=min_frames)
    # Scores at the threshold count (<=): the flag comes on with the min_frames-th of them.
    assert _flags(config, [0.0] * (min_frames + 1)) == [False] * (min_frames - 1) + [True, True]
    # One score above enter_score breaks the streak, which starts again after it.
    streak = [-1.0] * (min_frames - 1) + [0.5] + [-1.0] * min_frames
    assert _flags(config, streak) == [False] * (2 * min_frames - 1) + [True]


@pytest.mark.parametrize("min_frames", [1, 2, 4])
def test_the_flag_turns_off_after_min_frames_in_a_row_above_leave_score(min_frames):
    config = LoopClosureConfig(enter_score=0.0, leave_score=1.0, min_frames=min_frames)
    enter = [-1.0] * min_frames
    # Between enter_score and leave_score, and at leave_score itself, a known place stays known.
    band = [0.5, 1.0, 0.99, 1.0] * 3
    assert _flags(config, enter + band) == [False] * (min_frames - 1) + [True] * (1 + len(band))
    # Above leave_score: off with the min_frames-th score in a row; a score back in the band resets it.
    leave = [1.5] * (min_frames - 1) + [1.0] + [1.5] * min_frames
    flags = _flags(config, enter + leave)[min_frames:]
    assert flags == [True] * (2 * min_frames - 1) + [False]
    # Once unknown, scores in the band (above enter_score) do not bring the flag back.
    assert _flags(config, enter + [2.0] * min_frames + band)[-len(band):] == [False] * len(band)


def test_non_finite_scores_count_as_unknown():
    config = LoopClosureConfig(enter_score=0.0, leave_score=1.0, min_frames=2)
    for bad in (math.nan, math.inf, -math.inf):
        assert _flags(config, [bad] * 4) == [False] * 4  # never known
        assert _flags(config, [-1.0, -1.0, bad, bad]) == [False, True, True, False]  # leaves
    # The default thresholds (inf): every finite score is a known place, after 3 frames.
    assert _flags(LoopClosureConfig(), [1e30, -5.0, 7.0, math.nan, math.nan, math.nan]) == [
        False, False, True, True, True, False]


def test_reset_forgets_the_flag_and_the_streak():
    detector = LoopClosureDetector(LoopClosureConfig(enter_score=0.0, leave_score=1.0, min_frames=2))
    assert [detector.update(s) for s in (-1.0, -1.0, 2.0)] == [False, True, True]  # one above leave
    detector.reset()
    assert not detector.known
    assert [detector.update(s) for s in (2.0, -1.0, -1.0)] == [False, False, True]  # streak from 0


def test_invalid_configurations_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match="min_frames must be >= 1"):
        LoopClosureConfig(min_frames=0)
    with pytest.raises(ValueError, match=r"enter_score \(2.0\) must be <= leave_score \(1.0\)"):
        LoopClosureConfig(enter_score=2.0, leave_score=1.0)
    LoopClosureConfig(enter_score=1.0, leave_score=1.0)  # equal thresholds: no band, still valid


def test_calibrated_thresholds_are_percentiles_of_the_finite_in_map_scores():
    scores = np.r_[np.arange(101.0), np.nan, np.inf, -np.inf]
    config = calibrate_thresholds(scores, enter_percentile=50, leave_percentile=90, min_frames=4)
    assert (config.enter_score, config.leave_score, config.min_frames) == (50.0, 90.0, 4)
    assert calibrate_thresholds(np.arange(101.0)).enter_score == 90.0  # defaults: 90th and 99th
    for enter, leave in ((0, 50), (60, 50), (50, 101)):
        with pytest.raises(ValueError, match="enter_percentile <= leave_percentile"):
            calibrate_thresholds(np.arange(10.0), enter, leave)
    with pytest.raises(ValueError, match="mc_samples > 0"):
        calibrate_thresholds([math.nan, math.nan])


def test_run_detector_keeps_the_order_within_each_sequence():
    config = LoopClosureConfig(enter_score=0.0, leave_score=0.0, min_frames=2)
    scores = [-1.0, 5.0, -1.0, 5.0, 5.0, -1.0]
    sequences = ["a", "b", "a", "b", "b", "a"]
    # a: -1, -1, -1 -> off, on, on; b: 5, 5, 5 -> never on.
    assert run_detector(config, scores, sequences).tolist() == [False, False, True, False, False, True]
    with pytest.raises(ValueError):
        run_detector(config, scores, sequences[:-1])


def test_roc_auc_counts_a_missing_score_as_unknown_and_needs_both_kinds():
    assert roc_auc([0.0, 1.0], [math.nan]) == 1.0  # a NaN (no score) ranks above every known frame
    assert roc_auc([math.nan], [math.nan]) == 0.5
    with pytest.raises(ValueError, match="both known and unknown"):
        roc_auc([], [1.0])
