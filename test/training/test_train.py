"""Training on the synthetic scene, on CPU, through the `posenet-ros` command as a user runs it.

Acceptance of the PoseNet issue: both the linear-sum and the learned-weighting losses beat the
mean-pose baseline 5x on held-out test frames; the reprojection loss after learned-weighting
pretraining does not make the errors worse; an interrupted and resumed run ends with the same
weights; two DDP processes (gloo) train and write one checkpoint; a torchvision-format backbone
loads through --pretrained; bad inputs give clear errors.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from posenet_ros.cli import main
from posenet_ros.core.camera import eval_transform
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.predict import predict
from posenet_ros.inference.metrics import mean_pose_baseline
from posenet_ros.runtime.checkpoint import load_model

# 64x48 images from a wide-angle (90 degree) camera, eight training loops and one test loop through the
# mapped room; the small CPU backbone with PoseNet's random crops (44x60 of 48x64) as augmentation.
SCENE = ["width=64", "height=48", "hfov_deg=90", "frames_per_sequence=96", "train_sequences=8",
         "outside_sequences=0", "variations=[]"]
TRAIN = ["device=cpu", "model.backbone=resnet_tiny", "model.dropout=0.2", "data.resize=48",
         "data.crop=[44,60]", "batch_size=16", "lr=1e-3"]
EPOCHS = 60
# The tiny scene's runs check mechanics, not accuracy: 32x24 images, whole images, batches of 4.
TINY = ["data.resize=24", "data.crop=null", "batch_size=4"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "synthetic"
    assert main(["synth", "--quiet", str(out), *SCENE]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "synthetic"
    assert main(["synth", "--quiet", str(out), "width=32", "height=24", "frames_per_sequence=10",
                 "train_sequences=1", "outside_sequences=0", "variations=[]"]) == 0
    return out


def train(scene: Path, out: Path, *args: str) -> None:
    assert main(["train", "--quiet", "--data", str(scene), "--out", str(out), *TRAIN, *args]) == 0


def held_out_errors(model_dir: Path, scene: Path) -> tuple[float, float, float]:
    """(median position error m, mean-pose baseline median m, median orientation error deg) on test."""
    loaded = load_model(model_dir)
    predictions = predict(loaded.model, load_frames(scene, "test"), eval_transform(loaded.config))
    train_poses = loaded.map_poses_N7
    baseline, _ = mean_pose_baseline(train_poses[:, :3], train_poses[:, 3:], predictions.position_true_N3,
                                     predictions.quat_true_N4)
    return (float(np.median(predictions.position_error_N)), float(np.median(baseline)),
            float(np.median(predictions.orientation_error_N)))


def test_linear_sum_loss_beats_the_mean_pose_five_times(scene, tmp_path):
    train(scene, tmp_path / "run", "loss.kind=linear", "loss.beta=1", f"epochs={EPOCHS}", "data.val_split=''")
    error, baseline, rotation = held_out_errors(tmp_path / "run", scene)
    print(f"linear sum: median {error:.3f} m, {rotation:.1f} deg; mean-pose baseline {baseline:.3f} m")
    assert error * 5 < baseline


def test_learned_weighting_then_reprojection(scene, tmp_path):
    run = tmp_path / "run"
    extra = 20
    # One run with the seed's schedule (cosine learning rate over all epochs), stopped after the
    # learned-weighting epochs to keep that model.
    train(scene, run, "loss.kind=learned", f"epochs={EPOCHS + extra}",
          f"reprojection_after_epochs={EPOCHS}", "--stop-after-epoch", str(EPOCHS))
    error, baseline, rotation = held_out_errors(run, scene)
    print(f"learned weighting: median {error:.3f} m, {rotation:.1f} deg; baseline {baseline:.3f} m")
    assert error * 5 < baseline
    history = json.loads((run / "metrics.json").read_text())
    assert len(history) == EPOCHS and history[-1]["loss_kind"] == "learned"
    assert history[-1]["val_median_position_m"] > 0  # validated on the test split every epoch
    for key in ("s_x", "s_q"):  # the learned weights move (ŝq settles near log Lq, close to -3 here)
        values = [row[key] for row in history]
        assert max(values) - min(values) > 0.01, key

    assert main(["train", "--quiet", "--out", str(run), "--resume"]) == 0
    history = json.loads((run / "metrics.json").read_text())
    assert [row["loss_kind"] for row in history[EPOCHS:]] == ["reprojection"] * extra
    reprojection_px = [row["l_reproj_px"] for row in history[EPOCHS:]]
    assert all(0 < px < 100 for px in reprojection_px)
    assert np.mean(reprojection_px[-5:]) < np.mean(reprojection_px[:5])  # the fine-tuning fits it
    error_after, _, rotation_after = held_out_errors(run, scene)
    print(f"after reprojection: median {error_after:.3f} m, {rotation_after:.1f} deg; "
          f"reprojection loss {reprojection_px[0]:.2f} -> {reprojection_px[-1]:.2f} px")
    assert error_after <= error and rotation_after <= rotation


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny_scene, tmp_path):
    # Random crops and colour jitter must replay exactly too.
    common = ["epochs=3", "batch_size=4", "model.backbone=mobilenet_v2", "lr_schedule=cosine",
              "data.resize=24", "data.crop=16", "data.brightness=0.2"]
    train(tiny_scene, tmp_path / "straight", *common)
    train(tiny_scene, tmp_path / "resumed", *common, "--stop-after-epoch", "1")
    assert len(json.loads((tmp_path / "resumed" / "metrics.json").read_text())) == 1
    assert main(["train", "--quiet", "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)
    # And the run really trained: the weights moved from their initial values.
    torch.manual_seed(0)
    first = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert first[-1]["loss"] < first[0]["loss"]


def test_two_ddp_processes_train_and_write_one_checkpoint(tiny_scene, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "posenet_ros.cli", "train", "--quiet", "--data", str(tiny_scene), "--out",
               str(tmp_path / "ddp"), *TRAIN, *TINY, "epochs=2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.safetensors")) == ["model.safetensors",
                                                                              "train_state.safetensors"]
    history = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert load_model(tmp_path / "ddp").model.position_scale > 0


def test_torchvision_format_backbone_loads_through_pretrained(tiny_scene, tmp_path):
    from posenet_ros.models.backbones import build_backbone

    torch.manual_seed(123)
    backbone = build_backbone("resnet18")
    weights = {k: v for k, v in backbone.state_dict().items()}
    weights["fc.weight"], weights["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    save_file(weights, str(tmp_path / "resnet18_imagenet.safetensors"))
    train(tiny_scene, tmp_path / "run", *TINY, "model.backbone=resnet18", "epochs=1", "lr=1e-12",
          "data.val_split=''",
          "--pretrained", str(tmp_path / "resnet18_imagenet.safetensors"))
    trained = load_file(str(tmp_path / "run" / "model.safetensors"))
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.weight"):
        torch.testing.assert_close(trained[f"backbone.{key}"], weights[key], rtol=0, atol=1e-6)


def test_bad_inputs_give_clear_errors(tiny_scene, tmp_path, capsys):
    assert main(["train", "--quiet", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere: no such dataset folder" in capsys.readouterr().err
    assert main(["train", "--quiet", "--data", str(tiny_scene), "--out", str(tmp_path / "o"),
                 "lr_rate=1"]) == 2
    assert "unknown config key(s): lr_rate" in capsys.readouterr().err
    config = tmp_path / "train.yaml"
    config.write_text("model:\n  backbone: resnet19\n")
    assert main(["train", "--quiet", "--config", str(config), "--data", str(tiny_scene), "--out",
                 str(tmp_path / "o")]) == 2
    assert "resnet19" in capsys.readouterr().err
    assert main(["train", "--quiet", "--out", str(tmp_path / "o"), "--resume"]) == 2
    assert "no training state to resume" in capsys.readouterr().err
    # A corrupt checkpoint and a checkpoint of another architecture, given to eval.
    train(tiny_scene, tmp_path / "run", *TINY, "epochs=1", "data.val_split=''")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((tmp_path / "run" / "model.safetensors").read_bytes()[:-100])
    assert main(["eval", "--quiet", "--model", str(corrupt), "--data", str(tiny_scene), "--out",
                 str(tmp_path / "e")]) == 2
    assert "corrupt.safetensors: not a readable" in capsys.readouterr().err
    # Resuming with a changed architecture is refused instead of silently mixing runs.
    assert main(["train", "--quiet", "--out", str(tmp_path / "run"), "--resume",
                 "model.backbone=resnet34"]) == 2
    assert "differs from the run being resumed in model.backbone" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "run")


def test_eval_and_saliency_commands(tiny_scene, tmp_path, capsys):
    train(tiny_scene, tmp_path / "run", *TINY, "epochs=1", "data.val_split=''")
    capsys.readouterr()
    assert main(["eval", "--quiet", "--model", str(tmp_path / "run"), "--data", str(tiny_scene),
                 "--out", str(tmp_path / "eval"), "--threshold", "2,10"]) == 0
    table = capsys.readouterr().out
    assert "Median position" in table and "5cm/5°" in table and "2m/10°" in table and "Overall" in table
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["frames"] == 10 and "within_2m_10deg" in metrics["overall"]
    for name in ("predictions.csv", "error_cdf.png", "top_view.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 100
    assert main(["saliency", "--model", str(tmp_path / "run"), "--data", str(tiny_scene), "--out",
                 str(tmp_path / "saliency"), "--frames", "0", "5"]) == 0
    assert len(list((tmp_path / "saliency").glob("saliency_*.png"))) == 2
