"""models/backbones.py: torchvision-compatible architectures, weight loading (also into depth
channels), dropout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from posenet_ros.models.backbones import (
    BACKBONES,
    Backbone,
    ExplicitDropout,
    build_backbone,
    load_pretrained,
    set_explicit_dropout,
)

OUT_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "mobilenet_v2": 1280, "resnet_tiny": 128}

# torchvision totals minus the classifier (fc / classifier.1):
# resnet18 11,689,512 - 513,000; resnet34 21,797,672 - 513,000; resnet50 25,557,032 - 2,049,000;
# mobilenet_v2 3,504,872 - 1,281,000.
PARAMETER_COUNTS = {
    "resnet_tiny": 309_456,  # ours, no torchvision counterpart: one BasicBlock per stage, widths 16..128
    "resnet18": 11_176_512,
    "resnet34": 21_284_672,
    "resnet50": 23_508_032,
    "mobilenet_v2": 2_223_872,
}

RESNET18_TORCHVISION_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.running_mean",
    "layer1.1.conv2.weight",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.running_var",
    "layer3.1.bn1.num_batches_tracked",
    "layer4.0.downsample.1.weight",
    "layer4.1.bn2.bias",
]
RESNET50_TORCHVISION_KEYS = [
    "layer1.0.conv3.weight",
    "layer1.0.bn3.running_var",
    "layer1.0.downsample.0.weight",
    "layer3.5.conv2.weight",
    "layer4.2.bn3.bias",
]
MOBILENET_V2_TORCHVISION_KEYS = [
    "features.0.0.weight",
    "features.0.1.weight",
    "features.0.1.running_mean",
    "features.0.1.num_batches_tracked",
    "features.1.conv.0.0.weight",
    "features.1.conv.0.1.bias",
    "features.1.conv.1.weight",
    "features.1.conv.2.weight",
    "features.2.conv.0.0.weight",
    "features.2.conv.1.0.weight",
    "features.2.conv.2.weight",
    "features.2.conv.3.weight",
    "features.17.conv.3.running_var",
    "features.18.0.weight",
    "features.18.1.running_var",
]


def make_images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Deterministic images_B3HW."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


def build(name: str, inner_dropout_p: float = 0.0, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return build_backbone(name, inner_dropout_p)


@pytest.fixture(scope="module")
def resnet18() -> Backbone:
    return build("resnet18").eval()


@pytest.mark.parametrize("name", BACKBONES)
def test_output_shape_and_channels(name: str) -> None:
    backbone = build(name).eval()
    assert isinstance(backbone, Backbone)
    assert backbone.out_channels == OUT_CHANNELS[name]
    with torch.no_grad():
        features_BCHW = backbone(make_images(2, 64))
        assert features_BCHW.shape == (2, OUT_CHANNELS[name], 2, 2)
        features_BCHW = backbone(make_images(1, 32)[:, :, :, :20])  # odd sizes round up
        assert features_BCHW.shape == (1, OUT_CHANNELS[name], 1, 1)
    assert torch.isfinite(features_BCHW).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_parameter_counts_match_torchvision_without_classifier(name: str) -> None:
    backbone = build(name)
    assert sum(p.numel() for p in backbone.parameters()) == PARAMETER_COUNTS[name]


def test_names_listed() -> None:
    assert BACKBONES == ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "resnet_tiny")


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50, mobilenet_v2"):
        build_backbone("vgg16")


def test_resnet_keys_are_torchvision_names(resnet18: Backbone) -> None:
    keys = set(resnet18.state_dict())
    assert set(RESNET18_TORCHVISION_KEYS) <= keys
    assert not any(k.startswith("fc.") for k in keys)
    assert set(RESNET50_TORCHVISION_KEYS) <= set(build("resnet50").state_dict())


def test_mobilenet_keys_are_torchvision_names() -> None:
    keys = set(build("mobilenet_v2").state_dict())
    assert set(MOBILENET_V2_TORCHVISION_KEYS) <= keys
    assert "features.19.0.weight" not in keys
    assert not any(k.startswith("classifier.") for k in keys)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_initialisation_is_seeded_and_torchvision_like(name: str) -> None:
    a, b, c = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    for (key, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), key
    conv_key = "conv1.weight" if name == "resnet18" else "features.0.0.weight"
    assert not torch.equal(a.state_dict()[conv_key], c.state_dict()[conv_key])
    for module in a.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    # kaiming_normal_ fan_out: std = sqrt(2 / (out_channels * k * k)).
    weight = a.state_dict()[conv_key]
    expected_std = (2.0 / (weight.shape[0] * weight.shape[2] * weight.shape[3])) ** 0.5
    assert abs(weight.std().item() / expected_std - 1.0) < 0.1


def torchvision_like_state(backbone: Backbone, classifier: str = "fc") -> dict[str, torch.Tensor]:
    """The backbone's state dict plus a fake classifier, as in a torchvision checkpoint."""
    state = {k: v.clone().contiguous() for k, v in backbone.state_dict().items()}
    state[f"{classifier}.weight"] = torch.zeros(10, backbone.out_channels)
    state[f"{classifier}.bias"] = torch.zeros(10)
    return state


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file(state, str(path))
    return path


@pytest.mark.parametrize(("name", "classifier"), [("resnet18", "fc"), ("mobilenet_v2", "classifier.1")])
def test_load_torchvision_format_gives_identical_outputs(name: str, classifier: str, tmp_path: Path) -> None:
    source = build(name, seed=1).eval()
    with torch.no_grad():  # non-trivial BN statistics so that they must be loaded too
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = save(torchvision_like_state(source, classifier), tmp_path / f"{name}.safetensors")

    target = build(name, seed=2).eval()
    ignored = load_pretrained(target, path)
    assert ignored == [f"{classifier}.bias", f"{classifier}.weight"]
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    images = make_images()
    with torch.no_grad():
        assert torch.equal(source(images), target(images))


def test_load_renamed_key_names_it(resnet18: Backbone, tmp_path: Path) -> None:
    state = torchvision_like_state(resnet18)
    state["layer1.0.conv_1.weight"] = state.pop("layer1.0.conv1.weight")
    path = save(state, tmp_path / "renamed.safetensors")
    with pytest.raises(ValueError, match=r"missing keys: layer1\.0\.conv1\.weight") as info:
        load_pretrained(build("resnet18"), path)
    assert "layer1.0.conv_1.weight" in str(info.value)
    assert "renamed.safetensors" in str(info.value)


def test_load_extra_key_is_not_ignored(resnet18: Backbone, tmp_path: Path) -> None:
    state = torchvision_like_state(resnet18)
    state["head.weight"] = torch.zeros(3)
    path = save(state, tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match=r"unexpected keys: head\.weight"):
        load_pretrained(build("resnet18"), path)


def test_load_wrong_shape_names_key(resnet18: Backbone, tmp_path: Path) -> None:
    state = torchvision_like_state(resnet18)
    state["bn1.weight"] = torch.ones(65)
    path = save(state, tmp_path / "shape.safetensors")
    with pytest.raises(ValueError, match=r"bn1\.weight \(file \(65,\), model \(64,\)\)"):
        load_pretrained(build("resnet18"), path)


def test_load_other_architecture_fails(resnet18: Backbone, tmp_path: Path) -> None:
    path = save(torchvision_like_state(resnet18), tmp_path / "resnet18.safetensors")
    with pytest.raises(ValueError, match="missing keys"):
        load_pretrained(build("resnet34"), path)


def test_load_truncated_file_names_file(resnet18: Backbone, tmp_path: Path) -> None:
    path = save(torchvision_like_state(resnet18), tmp_path / "truncated.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.safetensors"):
        load_pretrained(build("resnet18"), path)
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"truncated\.safetensors"):
        load_pretrained(build("resnet18"), path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors"):
        load_pretrained(build("resnet18"), tmp_path / "absent.safetensors")


def test_load_pth_refused_with_conversion_hint(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"not read")
    with pytest.raises(ValueError, match="safetensors") as info:
        load_pretrained(build("resnet18"), path)
    assert "save_file" in str(info.value)


def test_explicit_dropout_module() -> None:
    x = torch.ones(4, 100)
    assert torch.equal(ExplicitDropout(0.0, active=True)(x), x)
    dropout = ExplicitDropout(0.5).train()
    assert torch.equal(dropout(x), x)
    dropout.active = True
    dropout.eval()
    y = dropout(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0} and (y == 0).any()
    with pytest.raises(ValueError):
        ExplicitDropout(1.0)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_inner_dropout_inactive_is_deterministic_in_train_mode(name: str) -> None:
    backbone = build(name, inner_dropout_p=0.5).train()
    images = make_images(2, 32)
    with torch.no_grad():
        assert torch.equal(backbone(images), backbone(images))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_inner_dropout_active_is_random_and_seeded(name: str) -> None:
    backbone = build(name, inner_dropout_p=0.3).eval()
    images = make_images(2, 32)
    with torch.no_grad():
        reference = backbone(images)
        assert set_explicit_dropout(backbone, True) == 1
        torch.manual_seed(7)
        first = backbone(images)
        second = backbone(images)
        torch.manual_seed(7)
        again = backbone(images)
        assert not torch.equal(first, second)
        assert not torch.equal(first, reference)
        assert torch.equal(first, again)
        set_explicit_dropout(backbone, False)
        assert torch.equal(backbone(images), reference)


def test_pretrained_rgb_filters_are_adapted_to_depth_channels(tmp_path):
    torch.manual_seed(0)
    rgb = build_backbone("resnet_tiny")
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    two = build_backbone("resnet_tiny", in_channels=2)
    five = build_backbone("resnet_tiny", in_channels=5)
    load_pretrained(two, path)
    load_pretrained(five, path)
    filters = rgb.conv1.weight.detach()
    mean = filters.mean(1, keepdim=True)
    torch.testing.assert_close(two.conv1.weight, mean.repeat(1, 2, 1, 1) * 1.5)
    torch.testing.assert_close(five.conv1.weight[:, :3], filters)
    torch.testing.assert_close(five.conv1.weight[:, 3:], mean.repeat(1, 2, 1, 1))
    torch.testing.assert_close(two.layer4[0].conv1.weight, rgb.layer4[0].conv1.weight)
    # The same value in every channel gives the RGB filters' response to a grey image.
    grey = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(two.conv1(grey.repeat(1, 2, 1, 1)), rgb.conv1(grey.repeat(1, 3, 1, 1)),
                                   rtol=1e-4, atol=1e-5)
