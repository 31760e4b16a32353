"""The offline reference the segment agent is compared with: `update` over items, in order.

The one offline fold of the tests (tests/state/test_segments.py uses it too, with its own
per-item reference in place of `update`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mmbee.schemas import SegmentClosed
from mmbee.state.segments import ContentItem, Reject, SegmentBuffer, SegmentConfig, update

Update = Callable[
    [SegmentBuffer, ContentItem, SegmentConfig],
    tuple[SegmentBuffer, list[SegmentClosed], list[Reject]],
]


def fold(
    items: Iterable[ContentItem], cfg: SegmentConfig, step: Update = update
) -> tuple[dict[str, SegmentBuffer], list[SegmentClosed], list[Reject]]:
    """Per-author buffers after `items`, every segment closed (in closing order), every reject
    (`step`: the per-item update, `update` unless a test compares it with another)."""
    bufs: dict[str, SegmentBuffer] = {}
    closed: list[SegmentClosed] = []
    rejects: list[Reject] = []
    for it in items:
        b, c, r = step(bufs.get(it.author_id) or SegmentBuffer.empty(it.author_id), it, cfg)
        bufs[it.author_id] = b
        closed += c
        rejects += r
    return bufs, closed, rejects
