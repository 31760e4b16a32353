"""The offline reference the segment agent is compared with: `update` over items, in order."""

from __future__ import annotations

from collections.abc import Iterable

from mmbee.schemas import SegmentClosed
from mmbee.state.segments import ContentItem, Reject, SegmentBuffer, SegmentConfig, update


def fold(
    items: Iterable[ContentItem], cfg: SegmentConfig
) -> tuple[dict[str, SegmentBuffer], list[SegmentClosed], list[Reject]]:
    """Per-author buffers after `items`, every segment closed (in closing order), every reject."""
    bufs: dict[str, SegmentBuffer] = {}
    closed: list[SegmentClosed] = []
    rejects: list[Reject] = []
    for it in items:
        b, c, r = update(bufs.get(it.author_id) or SegmentBuffer.empty(it.author_id), it, cfg)
        bufs[it.author_id] = b
        closed += c
        rejects += r
    return bufs, closed, rejects
