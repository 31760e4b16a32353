"""The streaming joiner: labels and window expiry, no feature from after the impression, restart
from table rows, and equality with the offline example build (jobs/train.py) on one log."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from joinkit import FAR, compare, drive, make_log, text_vectors  # noqa: E402

from mmbee.jobs.train import BuildConfig, build_examples  # noqa: E402
from mmbee.schemas import CommentEvent, GiftEvent, SegmentClosed, WatchEvent  # noqa: E402
from mmbee.schemas.scoring import TrainingExample  # noqa: E402
from mmbee.scorer.examples import LabelConfig, to_message  # noqa: E402
from mmbee.scorer.features import RECENT_WINDOWS_MS, FeatureConfig  # noqa: E402
from mmbee.state.authors import Timeline  # noqa: E402
from mmbee.state.users import (  # noqa: E402
    JoinerConfig,
    PartitionJoiner,
    UserRow,
    complete,
)
from mmbee.streams.views import AuthorView, ExpansionView, SegmentView, ViewSources  # noqa: E402

T0 = 1_746_000_000_000
MIN = 60_000
HOUR = 60 * MIN
FEATURES = FeatureConfig(history=8, segments=3, expansion_n=5)
CONFIG = JoinerConfig(features=FEATURES, labels=LabelConfig(), settle_s=0.0)


def watch(
    eid: str, dt: int, user: str = "u1", author: str = "a1", leave_ms: int | None = None
) -> WatchEvent:
    if leave_ms is None:
        return WatchEvent(
            event_id=eid, ts_ms=T0 + dt, user_id=user, author_id=author, live_id="l" + author
        )
    return WatchEvent(event_id=eid, ts_ms=T0 + dt, user_id=user, author_id=author,
                      live_id="l" + author, action="leave", watch_ms=leave_ms)  # fmt: skip


def gift(eid: str, dt: int, user: str = "u1", author: str = "a1", value: float = 2.0) -> GiftEvent:
    return GiftEvent(event_id=eid, ts_ms=T0 + dt, user_id=user, author_id=author,
                     live_id="l" + author, gift_value=value)  # fmt: skip


def comment(eid: str, dt: int, user: str = "u1", author: str = "a1") -> CommentEvent:
    return CommentEvent(event_id=eid, ts_ms=T0 + dt, user_id=user, author_id=author,
                        live_id="l" + author, text="hi")  # fmt: skip


def segment(author: str, start: int, rng: np.random.Generator) -> SegmentClosed:
    return SegmentClosed.model_validate(
        {"author_id": author, "live_id": "l" + author, "start_ms": start, "end_ms": start + 30_000,
         "n_frames": 1, "n_comments": 0, "n_asr": 0, "frame_mean": rng.normal(size=4).tolist()},
        context={"frame_dim": 4, "text_dim": 2},
    )  # fmt: skip


class World:
    """The pure streaming pieces over an event list: joiners per partition, author views."""

    def __init__(self, partitions: int = 2, config: JoinerConfig = CONFIG) -> None:
        self.config = config
        self.joiners = [PartitionJoiner(config) for _ in range(partitions)]
        self.segments = SegmentView(4, 2, lateness_ms=10_000, keep=6, retain_ms=FAR)
        self.authors = AuthorView()
        self.sources = ViewSources(self.authors, self.segments, ExpansionView(FAR),
                                   ExpansionView(FAR), config.features)  # fmt: skip
        self.timelines: dict[str, Timeline] = {}
        self.outcomes: list[str] = []

    def part(self, user: str) -> PartitionJoiner:
        return self.joiners[int(user[1:]) % len(self.joiners)]

    def feed(self, events: Sequence[BaseModel]) -> None:
        for ev in events:
            if isinstance(ev, SegmentClosed):
                self.segments.put(ev)
                continue
            if (isinstance(ev, WatchEvent) and ev.action == "enter") or isinstance(ev, GiftEvent):
                tl = self.timelines.setdefault(ev.author_id, Timeline(ev.author_id))
                tl.add("gift" if isinstance(ev, GiftEvent) else "watch", ev.event_id, ev.ts_ms, FAR)
                self.authors.put(tl.message())
            self.outcomes.append(self.part(ev.user_id).apply(ev, 0.0).outcome)  # type: ignore[attr-defined]

    def examples(self) -> dict[str, TrainingExample]:
        out = {}
        for j in self.joiners:
            for user, p in j.due(FAR):
                m = to_message(complete(user, p, self.sources, self.config.features))
                out[m.event_id] = m
        return out


def random_events(
    seed: int, start: int, end: int, n_users: int = 8, n_authors: int = 3
) -> list[BaseModel]:
    """Watches (enter/leave), comments, gifts and closed segments between `start` and `end`
    (offsets from T0), in event-time order; ties on purpose (second resolution)."""
    rng = np.random.default_rng(seed)
    timed: list[tuple[int, int, BaseModel]] = []
    for a in range(n_authors):
        s = start - start % 30_000
        while s + 30_000 <= end:
            seg = segment(f"a{a}", T0 + s, rng)
            timed.append((s + 30_000 + 10_000, 0, seg))  # arrives when the buffer closes it
            s += 30_000
    for n in range((end - start) // 20_000):
        dt = start + int(rng.integers(0, (end - start) // 1000)) * 1000
        u, a = f"u{rng.integers(n_users)}", f"a{rng.integers(n_authors)}"
        timed.append((dt, 1, watch(f"w{seed}-{n}", dt, u, a)))
        stay = int(rng.integers(5, 600)) * 1000
        timed.append((dt + stay, 1, watch(f"x{seed}-{n}", dt + stay, u, a, leave_ms=stay)))
        if rng.random() < 0.3:
            c = dt + int(rng.integers(0, 300)) * 1000
            timed.append((c, 1, comment(f"c{seed}-{n}", c, u, a)))
        if rng.random() < 0.25:
            g = dt + int(rng.integers(0, 4000)) * 1000
            timed.append((g, 1, gift(f"g{seed}-{n}", g, u, a, float(rng.integers(1, 50)))))
    timed.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in timed]


# --- labels ---------------------------------------------------------------------------------


def test_labels_window_expiry_duplicates_and_late() -> None:
    w = World(partitions=1)
    w.feed([
        watch("w1", 0),                      # positive: a gift exactly at the window's end
        watch("w2", MIN),                    # negative: commented, left early
        comment("c1", 2 * MIN),
        watch("x2", 2 * MIN, leave_ms=30_000),
        gift("g9", 3 * MIN, author="a2"),    # another streamer: decides nothing
        gift("g1", HOUR),                    # decides w1 (t + 1 h, inclusive) and w2 (in window)
        watch("w3", HOUR + MIN),
        gift("g1", HOUR + 2 * MIN),          # a re-delivered gift: duplicate
    ])  # fmt: skip
    assert w.outcomes[-1] == "duplicate"
    j = w.joiners[0]
    assert j.counts["positives"] == 2 and "negatives" not in j.counts
    # w3 waits until the watermark passes its window end (strictly)
    w.feed([watch("w4", 2 * HOUR + MIN, user="u3")])
    assert j.counts.get("negatives", 0) == 0
    w.feed([watch("w5", 2 * HOUR + MIN + 1, user="u3")])
    assert j.counts["negatives"] == 1
    # w1, w2 (positives) and w3 (negative) are decided and wait for emission; w4, w5 for labels
    assert (j.unemitted, j.waiting) == (3, 5)
    ex = w.examples()
    assert (j.unemitted, j.waiting) == (0, 2)
    assert (ex["w1"].label_gift, ex["w1"].gift_value, ex["w1"].emitted_at_ms) == (1, 2.0, T0 + HOUR)
    assert (ex["w2"].label_gift, ex["w2"].label_comment, ex["w2"].label_watch) == (1, 1, 0)
    assert (ex["w3"].label_gift, ex["w3"].emitted_at_ms) == (0, T0 + 2 * HOUR + MIN + 1)
    assert ex["w1"].label_watch == 1 and ex["w1"].label_comment == 1  # c1 is in its window too
    # an impression whose whole window is behind the watermark cannot be labelled
    w.feed([watch("w6", MIN, user="u5")])
    assert w.outcomes[-1] == "late"
    # the user side of w3 holds w1, w2 (watches), c1 (comment), g1 (gift) and nothing later
    hist = [(t - T0, a, k) for t, a, k in ex["w3"].history]
    assert ex["w3"].user_watches == 2 and ex["w3"].user_gifts == 2
    assert all(t < HOUR + MIN for t, _, _ in hist)


def test_event_ids_are_pruned_behind_the_horizon_and_duplicates_inside_it_refused() -> None:
    """A chatty user's remembered ids stay bounded by the horizon; pruning drops only expired
    ids, so a redelivery inside the horizon is still a duplicate, one outside it is late."""
    w = World(partitions=1)
    j, horizon = w.joiners[0], CONFIG.horizon_ms
    step = 30_000
    n = 3 * horizon // step
    for i in range(n):
        w.feed([comment(f"c{i}", i * step)])
        j.prune("u1")
        assert len(j.rows["u1"].ids) <= horizon // step + 2
    assert w.outcomes.count("applied") == n
    recent = n - horizon // step + 1  # applied within the horizon of the watermark
    w.feed([comment(f"c{recent}", recent * step)])
    assert w.outcomes[-1] == "duplicate"
    w.feed([comment("c0", 0)])
    assert w.outcomes[-1] == "late"


def test_same_millisecond_events_are_not_visible() -> None:
    w = World(partitions=1)
    # the agent applies a millisecond's events watch, comment, gift (the offline tie order)
    w.feed([watch("w0", 0), watch("w1", 5 * MIN), comment("c", 5 * MIN), gift("g1", 5 * MIN)])
    w.feed([watch("w9", 3 * HOUR, user="u2")])
    ex = w.examples()
    # the gift at w1's millisecond decides it but is not in its features
    assert ex["w1"].label_gift == 1 and ex["w1"].user_gifts == 0
    assert ex["w1"].author_gifts == 0 and ex["w1"].author_watches == 1


# --- point in time --------------------------------------------------------------------------


def test_no_feature_uses_information_after_the_impression() -> None:
    cut = 90 * MIN
    base = random_events(1, 0, 3 * HOUR)
    past = [e for e in base if _time(e) < T0 + cut]
    other = random_events(2, cut, 3 * HOUR)  # a different future
    a, b = World(), World()
    a.feed(base + [watch("end", 9 * HOUR, user="u0")])
    b.feed(past + other + [watch("end", 9 * HOUR, user="u0")])
    ea, eb = a.examples(), b.examples()
    labels = {"label_watch", "label_comment", "label_gift", "gift_value", "emitted_at_ms"}
    before = [e for e, m in ea.items() if m.ts_ms < T0 + cut]
    assert len(before) > 100
    for e in before:  # features of every earlier impression are bit-identical
        assert ea[e].model_dump(exclude=labels) == eb[e].model_dump(exclude=labels), e
    # and equal to brute force over the events strictly before each impression
    enters = [
        (e.ts_ms, e.author_id) for e in base if isinstance(e, WatchEvent) and e.action == "enter"
    ]
    gifts = [(e.ts_ms, e.author_id) for e in base if isinstance(e, GiftEvent)]
    segs = [e for e in base if isinstance(e, SegmentClosed)]
    checked = 0
    for m in ea.values():
        t = m.ts_ms
        assert all(h[0] < t for h in m.history)
        assert m.author_watches == sum(1 for s, x in enters if x == m.author_id and s < t)
        assert m.author_gifts == sum(1 for s, x in gifts if x == m.author_id and s < t)
        w15 = RECENT_WINDOWS_MS[-1]
        assert m.author_recent_gifts[-1] == sum(
            1 for s, x in gifts if x == m.author_id and t - w15 <= s < t
        )
        visible = [s.start_ms for s in segs if s.author_id == m.author_id and s.end_ms + 10_000 < t]
        assert m.segment_starts == sorted(visible)[-FEATURES.segments :]
        checked += 1
    assert checked == len(ea)


def _time(e: BaseModel) -> int:
    return e.end_ms + 10_000 if isinstance(e, SegmentClosed) else e.ts_ms  # type: ignore[attr-defined]


# --- restart ------------------------------------------------------------------------------------


def test_restart_from_table_rows_and_redelivery_give_the_same_examples() -> None:
    events = random_events(3, 0, 4 * HOUR) + [watch("end", 9 * HOUR, user="u0")]
    whole = World()
    whole.feed(events)
    expected = whole.examples()

    table: dict[str, bytes] = {}
    w = World()
    half = len(events) // 2
    w.feed(events[:half])
    emitted = w.examples()
    for j in w.joiners:  # what the agent wrote: one row per user
        for user, row in j.rows.items():
            table[user] = row.dumps(0)
    # a new worker: rows from the table, the un-committed tail redelivered (some twice)
    w2 = World()
    w2.segments, w2.authors, w2.timelines = w.segments, w.authors, w.timelines
    w2.sources = w.sources
    for j in w2.joiners:
        j.load = lambda user: UserRow.loads(table[user])[0] if user in table else None
    redelivered = events[half - 40 : half]
    w2.feed(redelivered + events[half:])
    assert w2.outcomes[: len(redelivered)].count("duplicate") == sum(
        1 for e in redelivered if not isinstance(e, SegmentClosed)
    )
    emitted.update(w2.examples())
    assert emitted.keys() == expected.keys()
    assert all(emitted[e] == expected[e] for e in expected)


def test_row_round_trip() -> None:
    w = World(partitions=1)
    w.feed(random_events(4, 0, HOUR))
    for row in w.joiners[0].rows.values():
        back, p = UserRow.loads(row.dumps(7))
        assert p == 7 and back.dumps(7) == row.dumps(7)


# --- against the offline build ------------------------------------------------------------------


@pytest.mark.models
@pytest.mark.slow
def test_streaming_joiner_equals_offline_build(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    log = make_log(
        tmp_path / "log", text_vectors(request.config), n_users=300, n_streamers=20, days=1
    )
    build = BuildConfig()
    built = build_examples(log, build, progress=False)
    got = drive(log, build)
    report: dict[str, Any] = compare(got, built, build)
    print("joiner vs offline:", report)
    assert report["common"] > 0.97 * len(built.table)
    assert report.get("missing_not_tail", 0) == 0 and report["extra"] == 0
    for col in (
        "ts",
        "user",
        "hist_kind",
        "hist_age",
        "hist_author",
        "dense",
        "labels",
        "gift_value",
    ):
        assert report[col] == 0, (col, report)
    assert report.get("emitted_at", 0) == 0
    assert report.get("segments_unexplained", 0) == 0
