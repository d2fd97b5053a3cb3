"""Convolutional backbones with torchvision-compatible module and parameter names.

The ResNet-18/34/50 and MobileNetV2 (width 1.0) architectures are rebuilt here, with the exact
attribute names of torchvision's `resnet.py` and `mobilenetv2.py`, so that a torchvision ImageNet state
dict (converted by the user to safetensors) loads with strict key matching. The classifier
(`fc.*` for ResNets, `classifier.*` for MobileNetV2) is not part of a backbone; `load_pretrained`
ignores exactly those keys.

Every backbone maps `images_B3HW` to its last feature map `features_BCHW` (before pooling), with
output stride 32 and `out_channels` channels. `in_channels` other than 3 (a depth stream, early
RGB-D fusion) changes only the first convolution; `load_pretrained` then adapts the file's RGB
filters to it: fewer than 3 channels get the filters' mean over RGB, scaled by 3 / in_channels; more
than 3 keep the RGB filters for the first three and the mean for the others.

Each backbone also owns an `inner_dropout: ExplicitDropout` applied after each stage (for
"full-network" MC dropout). Its activity is set explicitly (`set_explicit_dropout`), never by
`module.train()` / `module.eval()`; with p == 0 (the default) it is the identity. It has no
parameters or buffers, so it does not change the state dict keys.

Nothing here downloads weights: pretrained weights are read from a local file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

logger = logging.getLogger(__name__)

# resnet_tiny (one BasicBlock per stage, 16 to 128 channels, no torchvision counterpart) is for tests
# and small experiments on CPU.
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "resnet_tiny")

# Keys of a torchvision classification state dict that a backbone does not have.
IGNORED_KEY_PREFIXES = ("fc.", "classifier.")
# The first convolution's weight (ResNet, MobileNetV2): the only tensor whose shape depends on in_channels.
FIRST_CONV_KEYS = ("conv1.weight", "features.0.0.weight")


class ExplicitDropout(nn.Module):
    """Dropout whose activity is the explicit `active` flag, independent of train()/eval().

    forward(x) = F.dropout(x, p, training=active); the identity when p == 0 or active is False.
    """

    def __init__(self, p: float = 0.0, active: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.active = bool(active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.active:
            return x
        return F.dropout(x, self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}, active={self.active}"


def set_explicit_dropout(module: nn.Module, active: bool) -> int:
    """Set `active` on every ExplicitDropout inside `module` (itself included); returns how many."""
    count = 0
    for m in module.modules():
        if isinstance(m, ExplicitDropout):
            m.active = bool(active)
            count += 1
    return count


class Backbone(nn.Module):
    """Base class: forward(images_B3HW) -> features_BCHW (last feature map, stride 32).

    Attributes:
        out_channels: C of the output feature map.
        inner_dropout: ExplicitDropout applied after each stage (identity unless p > 0 and active).
    """

    out_channels: int

    def __init__(self, out_channels: int, inner_dropout_p: float = 0.0) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.inner_dropout = ExplicitDropout(inner_dropout_p)


# ----------------------------------------------------------------------------------------- ResNet


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (two 3x3 convs), expansion 1."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (1x1, 3x3, 1x1), stride on the 3x3 conv (v1.5), expansion 4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNetBackbone(Backbone):
    """torchvision's ResNet without avgpool/fc: images_B3HW -> features_BCHW, stride 32.

    inner_dropout is applied after each of layer1..layer4 (so also to the output).
    """

    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: list[int], inner_dropout_p: float = 0.0,
        width: int = 64, in_channels: int = 3,
    ) -> None:
        super().__init__(8 * width * block.expansion, inner_dropout_p)
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """images_B3HW -> features_BCHW with C = out_channels, H and W divided by 32 (rounded up)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images_B3HW))))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self.inner_dropout(layer(x))
        return x


# ------------------------------------------------------------------------------------ MobileNetV2


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's rounding of channel counts to a multiple of `divisor` (never down by > 10%)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation with BatchNorm2d and ReLU6: keys `0.weight`, `1.*`."""

    def __init__(
        self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = out_planes


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 InvertedResidual: [1x1 expand] -> 3x3 depthwise -> 1x1 linear project."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        self.stride = stride
        hidden_dim = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers.extend(
            [
                ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Backbone(Backbone):
    """torchvision's mobilenet_v2 `features` (width 1.0): images_B3HW -> features_BCHW (C 1280), stride 32.

    inner_dropout is applied after features.3, .6, .13 and .18: the last module at output stride
    4, 8, 16 and 32, like the four ResNet stages (so also to the output).
    """

    INVERTED_RESIDUAL_SETTING = (
        # t (expand ratio), c (channels), n (repeats), s (stride of the first)
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    DROPOUT_AFTER = (3, 6, 13, 18)

    def __init__(self, inner_dropout_p: float = 0.0, width_mult: float = 1.0, round_nearest: int = 8,
                 in_channels: int = 3):
        last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        super().__init__(last_channel, inner_dropout_p)
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        features: list[nn.Module] = [ConvBNReLU6(in_channels, input_channel, stride=2)]
        for t, c, n, s in self.INVERTED_RESIDUAL_SETTING:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """images_B3HW -> features_BCHW with C = 1280, H and W divided by 32 (rounded up)."""
        x = images_B3HW
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.DROPOUT_AFTER:
                x = self.inner_dropout(x)
        return x


# ------------------------------------------------------------------------------------ construction


def build_backbone(name: str, inner_dropout_p: float = 0.0, in_channels: int = 3) -> Backbone:
    """Build a randomly initialised backbone (torchvision's init; deterministic given torch.manual_seed).

    Args:
        name: one of BACKBONES.
        inner_dropout_p: probability of the backbone's ExplicitDropout after each stage (0 = none).
            It only acts while activated with `set_explicit_dropout(backbone, True)`.
        in_channels: channels of the input image (3 for RGB).
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if name == "resnet18":
        return ResNetBackbone(BasicBlock, [2, 2, 2, 2], inner_dropout_p, in_channels=in_channels)
    if name == "resnet34":
        return ResNetBackbone(BasicBlock, [3, 4, 6, 3], inner_dropout_p, in_channels=in_channels)
    if name == "resnet50":
        return ResNetBackbone(Bottleneck, [3, 4, 6, 3], inner_dropout_p, in_channels=in_channels)
    if name == "mobilenet_v2":
        return MobileNetV2Backbone(inner_dropout_p, in_channels=in_channels)
    if name == "resnet_tiny":
        return ResNetBackbone(BasicBlock, [1, 1, 1, 1], inner_dropout_p, width=16, in_channels=in_channels)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


_CONVERT_HINT = (
    "Convert a torchvision .pth checkpoint once, in a trusted environment:\n"
    "    import torch, safetensors.torch\n"
    "    safetensors.torch.save_file({k: v.contiguous() for k, v in "
    "torch.load('resnet18-f37072fd.pth', map_location='cpu', weights_only=True).items()}, "
    "'resnet18.safetensors')"
)


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_pretrained(backbone: nn.Module, path: str | Path, partial: bool = False) -> list[str]:
    """Load torchvision-format weights from a `.safetensors` file into `backbone`, strictly.

    Keys starting with `fc.` or `classifier.` (the ImageNet classifier) are ignored; every other key
    must match the backbone's state dict exactly, with equal shapes. `partial`: the module is the
    first stages of a backbone (a scene coordinate encoder): keys it does not have are ignored too.

    Returns:
        The ignored keys, sorted.

    Raises:
        ValueError: the file is not `.safetensors` (never unpickled), is corrupt or truncated, or has
            missing / unexpected keys or shape mismatches (a few offending keys are named).
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path}: pretrained weights must be a .safetensors file (pickled files are never loaded).\n"
            + _CONVERT_HINT
        )
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc

    expected = backbone.state_dict()
    kept = {k: v for k, v in state.items()
            if not k.startswith(IGNORED_KEY_PREFIXES) and (not partial or k in expected)}
    ignored = sorted(set(state) - set(kept))
    for key in FIRST_CONV_KEYS:  # RGB filters for a first convolution of other input channels
        if key in kept and key in expected and kept[key].ndim == 4 and kept[key].shape[1] == 3:
            channels, mean = expected[key].shape[1], kept[key].mean(1, keepdim=True)
            if channels < 3:
                kept[key] = mean.repeat(1, channels, 1, 1) * (3.0 / channels)
            elif channels > 3:
                kept[key] = torch.cat([kept[key], mean.repeat(1, channels - 3, 1, 1)], dim=1)
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(kept[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(kept) & set(expected)
        if kept[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_few(mismatched)}")
    if problems:
        raise ValueError(
            f"{path}: weights do not match the {type(backbone).__name__} "
            f"(torchvision key names expected): " + "; ".join(problems)
        )
    backbone.load_state_dict(kept, strict=True)
    logger.info("loaded %d tensors from %s (ignored %d classifier keys)", len(kept), path, len(ignored))
    return ignored
