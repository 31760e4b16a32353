"""SegmentView: bisected visibility and lookups equal a scan of every entry."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mmbee.schemas.events import SegmentClosed
from mmbee.streams.views import SegmentView

T0 = 1_700_000_000_000
SEG = 30_000
LATE = 10_000


def closed(author: str, start: int, length: int, live: str = "l1") -> SegmentClosed:
    return SegmentClosed.model_validate(
        dict(author_id=author, live_id=live, start_ms=start, end_ms=start + length, n_frames=1,
             n_comments=0, n_asr=0, frame_mean=[1.0, 0.0]),
        context={"frame_dim": 2, "text_dim": 2},
    )  # fmt: skip


def scan(view: SegmentView, author: str, ts: int, last: int | None) -> list[tuple[int, int]]:
    out = [e for e in view.by_author.get(author, ()) if e.visible_ms < ts]
    out = out if last is None else out[len(out) - min(last, len(out)) :]
    return [(e.start_ms, e.visible_ms) for e in out]


segments = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 40), st.sampled_from([SEG, SEG // 3])),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(segs=segments, probes=st.lists(st.integers(-1, 45), min_size=1, max_size=8),
       last=st.one_of(st.none(), st.integers(0, 6)), refs_grid=st.integers(3, 50))  # fmt: skip
def test_visible_and_entry_equal_a_scan(
    segs: list[tuple[str, int, int]], probes: list[int], last: int | None, refs_grid: int
) -> None:
    # segments on a 10 s grid of starts, some shorter (a live's last segment) and some
    # overlapping the next one (SEG long, 10 s apart): both orders of visibility occur
    view = SegmentView(2, 2, lateness_ms=LATE, keep=2, refs_ms=refs_grid * 10_000)
    for author, k, length in segs:
        view.put(closed(author, T0 + k * 10_000, length))
    for author in ("a", "b", "c"):
        starts = [e.start_ms for e in view.by_author.get(author, ())]
        assert starts == sorted(set(starts))
        for p in probes:
            ts = T0 + p * 10_000 + 1
            got = [(e.start_ms, e.visible_ms) for e in view.visible(author, ts, last)]
            assert got == scan(view, author, ts, last)
            e = view.entry(author, T0 + p * 10_000)
            assert e == next((x for x in view.by_author.get(author, ())
                              if x.start_ms == T0 + p * 10_000), None)  # fmt: skip


def test_a_trimmed_view_still_bisects() -> None:
    view = SegmentView(2, 2, lateness_ms=LATE, keep=2, refs_ms=5 * SEG)
    for k in range(20):
        view.put(closed("a", T0 + k * SEG, SEG))
    assert len(view.by_author["a"]) < 20  # old references dropped
    newest = view.by_author["a"][-1]
    assert view.visible("a", newest.visible_ms, last=1) == [view.by_author["a"][-2]]
    assert view.visible("a", newest.visible_ms + 1)[-1] == newest
    assert view.entry("a", newest.start_ms) == newest
    assert view.entry("a", T0) is None
    assert not view.put(closed("a", newest.start_ms, SEG))  # idempotent by (author, start)
