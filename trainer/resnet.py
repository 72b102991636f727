"""ResNet-50 written here (torchvision does not import beside this torch), with torchvision's keys.

The module tree is torchvision's `resnet50` (v1.5: the stride sits on the 3x3 conv of a
bottleneck), so an ImageNet state dict saved from torchvision (`conv1.weight`, `bn1.*`,
`layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, ...) loads by key; its classifier
(`fc.*`) is not part of the trunk and is skipped. Differences, and why:
- `last_stride` (default 1, as re-identification models use): layer4 keeps the resolution of
  layer3, so a 384x128 crop gives a 24x8 map, enough rows for SSAN's six stripes.
- `layers` and `width` are free, so tests and the CPU benchmark run a narrow, shallow trunk
  through the same code (`layers=(3, 4, 6, 3), width=64` is ResNet-50).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * EXPANSION
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet(nn.Module):
    """The convolutional trunk: [B, 3, H, W] -> feature map [B, channels, rows, cols]; channels = 32 * width."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, last_stride: int = 1):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1 or width < 1:
            raise ValueError(f"ResNet needs 4 stages of >= 1 block and width >= 1, got {layers}, {width}")
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        for i, (blocks, stride) in enumerate(zip(layers, (1, 2, 2, last_stride))):
            planes = width * 2 ** i
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * EXPANSION
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.channels = inplanes
        self.last_stride = last_stride
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_rows(self, height: int) -> int:
        """Rows of the output map for an input `height`: conv1, maxpool, layer2, layer3 halve (rounding up)."""
        for _ in range(4 if self.last_stride == 1 else 5):
            height = (height - 1) // 2 + 1
        return height

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_torchvision_resnet(model: ResNet, path: str | os.PathLike) -> None:
    """Load a torchvision-format ResNet state dict from a file (a plain state dict of tensors;
    pickled code is refused). The classifier `fc.*` is dropped; any other mismatch is an error
    that lists every missing, unexpected and mis-shaped key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ResNet weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not readable as a ResNet state dict (plain tensors expected): {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel saves add "module."
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k} expected {expected[k]} found {tuple(state[k].shape)}"
                 for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]
    if missing or unexpected or misshaped:
        raise ValueError(f"ResNet weights in {path} do not fit the trunk: missing {missing[:10]}, "
                         f"unexpected {unexpected[:10]}, mis-shaped {misshaped[:10]}"
                         f" ({len(missing)}, {len(unexpected)}, {len(misshaped)} in all)")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
