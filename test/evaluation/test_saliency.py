"""evaluation/saliency.py: saliency maps (shape, sign, per-image independence), the PNG overlays
`write_saliency` writes, `posenet-ros saliency`, and its refusal of scene coordinate models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posenet_ros.cli import main
from posenet_ros.evaluation.saliency import saliency_maps, write_saliency

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_saliency_maps_shape_sign_and_dependence_on_input(untrained_model) -> None:
    model = untrained_model
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 24, 32, generator=generator)
    saliency = saliency_maps(model, images)
    assert saliency.shape == (2, 24, 32)
    assert torch.all(saliency >= 0) and torch.all(saliency.flatten(1).amax(1) > 0)
    assert all(p.grad is None for p in model.parameters())
    # Per image: the batched map equals the map of the image alone (eval mode, no interaction).
    torch.testing.assert_close(saliency_maps(model, images[1:]), saliency[1:], rtol=1e-4, atol=1e-7)
    changed = saliency_maps(model, images.flip(-1) * 0.5)
    assert (changed - saliency).abs().amax() > 1e-2 * saliency.amax()
    with torch.inference_mode():  # works inside the caller's inference mode too
        assert saliency_maps(model, images[:1]).shape == (1, 24, 32)
    with pytest.raises(ValueError, match="shape"):
        saliency_maps(model, images[0])


def test_write_saliency_writes_pngs_and_rejects_bad_frames(checkpoint: Path, scene_root: Path,
                                                          tmp_path: Path) -> None:
    paths = write_saliency(checkpoint, scene_root, out=tmp_path / "default", device="cpu")
    assert [p.name for p in paths] == [f"saliency_seq-02_{i}.png" for i in (0, 2, 5, 7)]
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    chosen = write_saliency(checkpoint, scene_root, frames=[3], out=tmp_path / "one", device="cpu")
    assert [p.name for p in chosen] == ["saliency_seq-02_3.png"]
    with pytest.raises(ValueError, match=r"0\.\.7"):
        write_saliency(checkpoint, scene_root, frames=[8], out=tmp_path / "bad", device="cpu")
    with pytest.raises(ValueError, match=r"0\.\.7"):
        write_saliency(checkpoint, scene_root, frames=[-1], out=tmp_path / "bad", device="cpu")
    assert not (tmp_path / "bad").exists()


def test_saliency_command_writes_one_overlay_per_frame(tiny_scene, tiny_run, tmp_path):
    assert main(["saliency", "--model", str(tiny_run), "--data", str(tiny_scene), "--out",
                 str(tmp_path / "saliency"), "--frames", "0", "5"]) == 0
    assert len(list((tmp_path / "saliency").glob("saliency_*.png"))) == 2


def test_a_scene_coordinate_model_is_refused(scr_run, capsys):
    model, scene = str(scr_run / "run"), str(scr_run / "scene")
    assert main(["saliency", "--model", model, "--data", scene, "--out", str(scr_run / "saliency")]) == 2
    assert "saliency maps are drawn for pose regression models" in capsys.readouterr().err
