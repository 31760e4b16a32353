"""The content agents under `agent.test_context()` (no broker): buffering, acks, DLQ, replays,
checkpoints, featurizing and ASR with the real models."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faust.types import TP, EventT
from faust.types.tuples import Message
from segref import fold
from streamkit import CTX, T0, asr, comment, frame

from mmbee.schemas import (
    AudioChunk,
    CommentEvent,
    DeadLetter,
    FrameEvent,
    SegmentClosed,
    decode_embedding,
)
from mmbee.schemas.events import AsrSegment
from mmbee.settings import Settings
from mmbee.state.segments import SegmentConfig
from mmbee.streams.app import build_app
from mmbee.streams.components.asr import AsrRuntime, asr_segment
from mmbee.streams.components.segments import SegmentRuntime
from mmbee.streams.publish import MemoryPublisher
from mmbee.streams.runtime.context import StreamContext

REPO = Path(__file__).resolve().parents[2]


def make_ctx(
    tmp_path: Path, monotonic: Callable[[], float] | None = None, **overrides: Any
) -> tuple[StreamContext, MemoryPublisher]:
    base: dict[str, Any] = dict(
        store="memory://",
        data_dir=tmp_path,
        partitions=2,
        segment_ms=1_000,
        allowed_lateness_ms=0,
        frame_dim=CTX["frame_dim"],
        text_dim=CTX["text_dim"],
        stream_batch_wait_ms=5,
        segment_align_wait_ms=0,  # no timer runs under test_context: apply what each batch brings
    )
    base.update(overrides)
    pub = MemoryPublisher()
    ctx = build_app(Settings(**base), components=["segments", "asr"], publisher=pub,
                    clock_ms=lambda: 1_700_000_000_000,
                    **({} if monotonic is None else {"monotonic": monotonic}))  # fmt: skip
    return ctx, pub


class Feed:
    """Puts raw messages with a chosen topic, partition and offset into a test_context agent."""

    def __init__(self, ctx: StreamContext, tc: Any, agent: str) -> None:
        self.ctx, self.tc, self.agent = ctx, tc, agent
        self.offsets: dict[tuple[str, int], int] = {}

    async def raw(
        self,
        name: str,
        key: bytes | None,
        value: bytes,
        partition: int = 0,
        offset: int | None = None,
    ) -> EventT:
        topic = self.ctx.topic_name(name)
        if offset is None:
            offset = self.offsets.get((topic, partition), -1) + 1
        self.offsets[(topic, partition)] = max(offset, self.offsets.get((topic, partition), -1))
        msg = Message(topic, partition, offset, 0.0, 0, None, key, value, b"",
                      generation_id=self.ctx.app.consumer_generation_id)  # fmt: skip
        channel = self.tc.stream().channel
        event: EventT = await channel.decode(msg)
        await channel.put(event)
        return event

    async def event(self, model: Any, partition: int = 0, offset: int | None = None) -> EventT:
        name = {FrameEvent: "live.frames", CommentEvent: "live.comments", AsrSegment: "live.asr",
                AudioChunk: "live.audio"}[type(model)]  # fmt: skip
        return await self.raw(
            name, model.author_id.encode(), model.model_dump_json().encode(), partition, offset
        )

    async def settle(self, n: int, timeout_s: float = 20.0) -> None:
        """Wait until the agent has processed `n` messages in total."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.ctx.metrics.get(self.agent, "processed") < n:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"processed {self.ctx.metrics.snapshot()}")
            await asyncio.sleep(0.01)


def run_agent(ctx: StreamContext, name: str, body: Callable[[Feed], Awaitable[None]]) -> None:
    async def main() -> None:
        async with ctx.app.agents[name].test_context() as tc:
            await body(Feed(ctx, tc, name.split(".")[-1]))

    asyncio.run(asyncio.wait_for(main(), 120))


def closed_segments(pub: MemoryPublisher, ctx: StreamContext) -> list[SegmentClosed]:
    return [
        SegmentClosed.model_validate_json(v, context=CTX)
        for v in pub.values(ctx.topic_name("content.segments"))
    ]


def dead_letters(pub: MemoryPublisher, ctx: StreamContext) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(v) for v in pub.values(ctx.topic_name("dlq"))]


def test_events_are_acked_only_once_their_segment_is_stored(tmp_path: Path) -> None:
    ctx, pub = make_ctx(tmp_path)
    runtime: SegmentRuntime = ctx.runtimes["segments"]

    async def body(feed: Feed) -> None:
        first = [await feed.event(frame(f"f{i}", 200 * i, seed=i)) for i in range(5)]
        first.append(await feed.event(comment("c0", 900, seed=9)))
        await feed.settle(6)
        assert not any(ev.message.acked for ev in first)  # open segment: not persisted yet
        assert runtime.describe_author("a1")["unpersisted_events"] == 6
        closer = await feed.event(asr("s0", 1_000))  # its midpoint (1200) closes segment 0
        await feed.settle(7)
        assert all(ev.message.acked for ev in first)
        assert closer.message.acked  # the write that closed segment 0 stores it (open) too
        view = runtime.describe_author("a1")
        assert [s["n_frames"] for s in view["closed"]] == [5]
        assert view["open"] == [{"start_ms": T0 + 1_000, "live_id": "l1", "counts": [0, 0, 1]}]

    run_agent(ctx, "mmbee.segments", body)
    segs = closed_segments(pub, ctx)
    assert [(s.n_frames, s.n_comments, s.n_asr) for s in segs] == [(5, 1, 0)]
    ref = np.mean([decode_embedding(frame(f"f{i}", 0, seed=i).embedding) for i in range(5)], 0)
    np.testing.assert_allclose(decode_embedding(segs[0].frame_mean), ref, atol=1e-6)
    assert segs[0].start_ms == T0 and segs[0].end_ms == T0 + 1_000
    assert ctx.metrics.get("segments", "table_writes") == 1


def test_matches_the_pure_reference(tmp_path: Path) -> None:
    from mmbee.state.segments import ContentItem

    ctx, pub = make_ctx(tmp_path, allowed_lateness_ms=300, segments_kept=3)
    events = [frame(f"f{i}", 137 * i, seed=i) for i in range(40)]
    events += [comment(f"c{i}", 211 * i, seed=100 + i) for i in range(20)]
    events += [asr(f"s{i}", 400 * i, seed=200 + i) for i in range(10)]
    events.sort(key=lambda e: (e.ts_ms, e.event_id))

    async def body(feed: Feed) -> None:
        for e in events:
            await feed.event(e)
        await feed.settle(len(events))

    run_agent(ctx, "mmbee.segments", body)
    cfg = SegmentConfig(1_000, 3, 300, CTX["frame_dim"], CTX["text_dim"])
    ref, ref_closed, _ = fold([ContentItem.from_event(e) for e in events], cfg)
    assert closed_segments(pub, ctx) == ref_closed
    view = ctx.runtimes["segments"].describe_author("a1")
    assert [SegmentClosed.model_validate(s, context=CTX) for s in view["closed"]] == list(
        ref["a1"].closed
    )


def test_bad_input_goes_to_the_dlq_and_the_agent_keeps_going(tmp_path: Path) -> None:
    ctx, pub = make_ctx(tmp_path)

    async def body(feed: Feed) -> None:
        acked = [
            await feed.raw("live.frames", b"a1", b"\x00garbage"),
            await feed.raw("live.comments", b"a1", b'{"event_id": "x1", "ts_ms": "soon"}'),
            await feed.raw("live.frames", b"a1", frame("wrong-key", 0, author="a2").model_dump_json().encode()),
            await feed.raw("live.frames", b"a1", frame("k", 0).model_dump_json().encode()[:-1] + b',"extra":1}'),
        ]  # fmt: skip
        await feed.event(frame("f0", 0))
        acked.append(await feed.event(frame("f0", 10)))  # duplicate event_id
        await feed.event(frame("f1", 2_500))  # closes segment 0
        await feed.settle(7)  # (one batch is applied in event-time order)
        acked.append(await feed.event(frame("late", 900)))
        await feed.settle(8)
        good = await feed.event(frame("f2", 2_600))
        await feed.settle(9)
        assert all(ev.message.acked for ev in acked)
        assert not good.message.acked

    run_agent(ctx, "mmbee.segments", body)
    letters = dead_letters(pub, ctx)
    assert [d.reason for d in letters] == [
        "decode_error",
        "validation_error",
        "validation_error",
        "validation_error",
        "late",
    ]  # the duplicate (a redelivery) is counted and acked, not dead-lettered
    assert letters[0].original == b"\x00garbage"
    assert letters[1].event_id == "x1"
    assert "author_id" in letters[2].detail
    assert letters[4].event_id == "late"
    assert all(d.agent == "segments" and d.source_topic.startswith("mmbee.live.") for d in letters)
    assert ctx.metrics.snapshot()["agents"]["segments"]["dlq"] == {
        "decode_error": 1,
        "late": 1,
        "validation_error": 3,
    }
    assert ctx.metrics.get("segments", "duplicates") == 1
    assert ctx.metrics.get("segments", "applied") == 3


def test_checkpoint_persists_idle_streams_and_acks_them(tmp_path: Path) -> None:
    ctx, pub = make_ctx(tmp_path, segment_checkpoint_events=4)
    runtime: SegmentRuntime = ctx.runtimes["segments"]

    async def body(feed: Feed) -> None:
        idle = await feed.event(frame("i0", 0, author="idle"))
        busy = [await feed.event(frame(f"b{i}", 10 * i, author="busy")) for i in range(4)]
        await feed.settle(5)
        assert idle.message.acked  # its stream was checkpointed, segment still open
        assert "idle" not in runtime.entries
        assert runtime.work.pending == 4 and "busy" in runtime.entries
        view = runtime.describe_author("idle")
        assert view["open"][0]["counts"] == [1, 0, 0] and view["unpersisted_events"] == 0
        assert not any(ev.message.acked for ev in busy)  # b0 is only 3 events old

    run_agent(ctx, "mmbee.segments", body)
    assert ctx.metrics.get("segments", "checkpoints") >= 1
    assert closed_segments(pub, ctx) == []


def test_redelivery_after_revocation_is_idempotent(tmp_path: Path) -> None:
    ctx, pub = make_ctx(tmp_path, partitions=1)
    runtime: SegmentRuntime = ctx.runtimes["segments"]
    events = [frame(f"f{i}", 300 * i, seed=i) for i in range(10)]

    stored: list[bool] = []

    async def body(feed: Feed) -> None:
        first = [await feed.event(e, offset=off) for off, e in enumerate(events[:6])]
        await feed.settle(6)
        # f4 closed segment 0 (f0-f3); the write after it stored f0-f4 (and f5 too when f5 came
        # in the same batch: the write follows the batch's last event of the stream)
        stored.extend(ev.message.acked for ev in first)
        assert stored[:5] == [True] * 5
        runtime.on_revoked({TP(ctx.topic_name(n), 0) for n in ("live.frames", "live.asr")})
        assert runtime.entries == {} and runtime.work.pending == 0
        for off, e in enumerate(events):  # the broker redelivers from the committed offset
            await feed.event(e, offset=off)
        await feed.settle(16)

    run_agent(ctx, "mmbee.segments", body)
    # exactly the stored events are recognised as replays; the rest is applied again
    assert ctx.metrics.get("segments", "replayed") == sum(stored)
    assert dead_letters(pub, ctx) == []
    ref_ctx, ref_pub = make_ctx(tmp_path / "ref", partitions=1)

    async def straight(feed: Feed) -> None:
        for off, e in enumerate(events):
            await feed.event(e, offset=off)
        await feed.settle(10)

    run_agent(ref_ctx, "mmbee.segments", straight)
    assert closed_segments(pub, ctx) == closed_segments(ref_pub, ref_ctx)
    # the same buffer; how many of its events are not stored yet depends on where the batch
    # boundaries fell (a stream is stored after the last event of a batch that closed a segment)
    got, want = runtime.describe_author("a1"), ref_ctx.runtimes["segments"].describe_author("a1")
    assert got.pop("unpersisted_events") <= 2 and want.pop("unpersisted_events") <= 2  # f8, f9
    assert got == want


def test_topics_are_aligned_in_event_time_before_they_are_applied(tmp_path: Path) -> None:
    now = [0.0]
    ctx, pub = make_ctx(tmp_path, monotonic=lambda: now[0], segment_align_wait_ms=10_000)
    runtime: SegmentRuntime = ctx.runtimes["segments"]

    async def body(feed: Feed) -> None:
        # the frames topic runs ahead of the others (as a backlog fetch would deliver them)
        for i in range(5):
            await feed.event(frame(f"f{i}", 500 * i, seed=i))
        await feed.event(frame("f5", 2_600))
        await feed.settle(6)
        assert runtime.work.held == 6  # comments and ASR have not delivered anything yet
        await feed.event(asr("s0", 0))  # speech midpoint 200
        await feed.event(asr("s1", 2_000))  # midpoint 2200
        await feed.event(comment("c0", 100))  # 2500 ms behind the frames
        await feed.event(comment("c1", 1_900))
        await feed.settle(10)
        assert runtime.work.held == 4  # frontier 1900: c1 (1900), f4, s1 (2200), f5 (2600) wait
        assert ctx.metrics.get("segments", "applied") == 6
        now[0] = 11.0  # the other topics stay quiet past the alignment wait
        await runtime.work.tick()
        assert runtime.work.held == 0

    run_agent(ctx, "mmbee.segments", body)
    assert dead_letters(pub, ctx) == []  # c0 came 2.5 s of event time after the frames: not late
    segs = closed_segments(pub, ctx)
    assert [(s.n_frames, s.n_comments, s.n_asr) for s in segs] == [(2, 1, 1), (2, 1, 0)]


def test_asr_segment_ids_stay_valid() -> None:
    from mmbee.encoders.featurizers import Transcript

    chunk = AudioChunk(
        event_id="x" * 128, ts_ms=T0, live_id="l", author_id="a", pcm_s16le=b"\0\0" * 800
    )
    seg = asr_segment(chunk, Transcript("hi", "", (), 0.05))
    assert len(seg.event_id) <= 128 and seg.event_id.startswith("asr-")
    assert seg.language == "und" and seg.end_ms == T0 + 50


@pytest.mark.models
def test_text_and_jpeg_content_is_featurized_with_the_real_models(tmp_path: Path) -> None:
    from PIL import Image

    from mmbee.encoders.featurizers import FrameEmbedder, TextEmbedder

    ctx, pub = make_ctx(tmp_path, frame_dim=1280, text_dim=384)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    jpeg = buf.getvalue()
    texts = ["what a great song", "hello from the chat"]

    async def body(feed: Feed) -> None:
        for i, t in enumerate(texts):
            await feed.event(CommentEvent(event_id=f"c{i}", ts_ms=T0 + i, user_id="u", author_id="a",
                                          live_id="l", text=t))  # fmt: skip
        await feed.event(FrameEvent(event_id="j", ts_ms=T0 + 5, live_id="l", author_id="a",
                                    image_jpeg=jpeg))  # fmt: skip
        await feed.event(FrameEvent(event_id="bad", ts_ms=T0 + 6, live_id="l", author_id="a",
                                    image_jpeg=b"\xff\xd8\xff" + b"\x00" * 64))  # fmt: skip
        await feed.event(AsrSegment(event_id="quiet", ts_ms=T0 + 7, end_ms=T0 + 9, live_id="l",
                                    author_id="a", text=" "))  # fmt: skip
        await feed.settle(5, timeout_s=100)

    run_agent(ctx, "mmbee.segments", body)
    view = ctx.runtimes["segments"].describe_author("a")
    assert view["open"][0]["counts"] == [1, 2, 0]
    letters = dead_letters(pub, ctx)
    assert [(d.reason, d.event_id) for d in letters] == [("decode_error", "bad")]
    assert ctx.metrics.get("segments", "asr_empty") == 1
    # pooled comment embedding = mean of the model's embeddings of the two texts
    runtime: SegmentRuntime = ctx.runtimes["segments"]
    from mmbee.state.segments import close_all

    _, closed = close_all(runtime.entries["a"].live.snapshot(), runtime.config)
    want = TextEmbedder().encode(texts).mean(0)
    assert closed[0].comment_mean is not None and closed[0].frame_mean is not None
    np.testing.assert_allclose(decode_embedding(closed[0].comment_mean), want, atol=1e-5)
    frame_want = FrameEmbedder().encode_jpeg([jpeg])[0]
    np.testing.assert_allclose(decode_embedding(closed[0].frame_mean), frame_want, atol=1e-4)


@pytest.mark.models
def test_asr_agent_transcribes_audio_chunks(tmp_path: Path) -> None:
    ctx, pub = make_ctx(tmp_path, asr_model="tiny.en")
    fixtures = REPO / "tests" / "fixtures" / "speech"
    with wave.open(str(fixtures / "welcome.wav"), "rb") as w:
        assert w.getframerate() == 16_000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = w.readframes(w.getnframes())
    expected = (fixtures / "welcome.txt").read_text().strip()
    chunk = AudioChunk(event_id="clip1", ts_ms=T0, live_id="l", author_id="a", pcm_s16le=pcm)

    async def body(feed: Feed) -> None:
        ok = await feed.event(chunk)
        bad = await feed.raw("live.audio", b"a", b'{"event_id": "odd", "pcm_s16le": "AAA"}')
        await feed.settle(2, timeout_s=100)
        assert ok.message.acked and bad.message.acked

    run_agent(ctx, "mmbee.asr", body)
    out = [AsrSegment.model_validate_json(v) for v in pub.values(ctx.topic_name("live.asr"))]
    assert len(out) == 1 and out[0].audio_event_id == "clip1"
    assert out[0].end_ms - out[0].ts_ms == len(pcm) // 32
    words = lambda t: [w.strip(".,!?").lower() for w in t.split()]  # noqa: E731
    assert words(out[0].text) == words(expected)
    assert [d.reason for d in dead_letters(pub, ctx)] == ["validation_error"]
    assert isinstance(ctx.runtimes["asr"], AsrRuntime)
