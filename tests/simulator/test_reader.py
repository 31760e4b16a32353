"""The log writer and reader: round trip, bad-row reporting, event order, KuaiLive-only logs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mmbee.schemas.events import CommentEvent, FrameEvent, GiftEvent, WatchEvent
from mmbee.simulator.content import dequantize_latents, expand_frame_latents, text_catalogue
from mmbee.simulator.reader import (
    TOPIC_RANK,
    LogError,
    count_events,
    event_id,
    iter_encoded,
    iter_events,
    read_communities,
    read_log,
    read_truth,
)
from mmbee.simulator.world import World


def test_round_trip(tiny_world: World, tiny_log: Path) -> None:
    b = read_log(tiny_log)
    assert b.bad_rows == [] and b.notes == []
    w = tiny_world
    clicks = b.table("click.csv")
    assert np.array_equal(clicks["user_id"], w.click_user)
    assert np.array_equal(clicks["live_id"], w.click_session)
    assert np.array_equal(clicks["streamer_id"], w.session_streamer[w.click_session])
    assert np.array_equal(clicks["timestamp"], w.click_ts)
    assert np.array_equal(clicks["watch_live_time"], w.click_watch_ms)
    gifts = b.table("gift.csv")
    assert np.array_equal(gifts["gift_price"], w.gift_price.astype(float))
    assert np.array_equal(gifts["timestamp"], w.gift_ts)
    rooms = b.table("room.csv")
    assert np.array_equal(rooms["start_timestamp"], w.session_start)
    assert rooms["live_content_category"][0] in (
        "game",
        "music",
        "dance",
        "chat",
        "outdoor",
        "cooking",
        "shopping",
        "education",
    )
    cat = text_catalogue()
    assert b.texts == list(cat.texts)
    assert np.array_equal(b.comment_text_ids(), w.comment_text)
    assert np.array_equal(b.table("mmbee_frames.csv")["latent_codes"], w.frame_latent)
    assert np.allclose(
        b.frame_embeddings()[:5], expand_frame_latents(dequantize_latents(w.frame_latent[:5]))
    )
    truth = read_truth(tiny_log)
    assert len(truth) == w.click_ts.size
    assert truth[event_id(b.log_id, "click", 3)] == float(w.click_p[3])  # exact round trip
    comm = read_communities(tiny_log)
    assert comm["u0"] == w.user_community[0] and comm["a1"] == w.streamer_community[1]


def test_events_ordered_complete_and_valid(tiny_world: World, tiny_log: Path) -> None:
    events = list(iter_events(tiny_log))
    w = tiny_world
    n_expected = 2 * w.click_ts.size + w.gift_ts.size + w.comment_ts.size + 2 * w.frame_ts.size
    assert len(events) == n_expected == count_events(tiny_log)
    ts = [e.ts_ms for _, e in events]
    assert ts == sorted(ts)
    ids = [e.event_id for _, e in events]
    assert len(set(ids)) == len(ids)
    ranks = [(e.ts_ms, TOPIC_RANK[t]) for t, e in events]
    assert ranks == sorted(ranks)
    # every gift comes after the enter of its impression; each enter before its leave
    seen_enter: set[tuple[str, str]] = set()
    for _topic, e in events:
        if isinstance(e, WatchEvent) and e.action == "enter":
            seen_enter.add((e.user_id, e.author_id))
        if isinstance(e, GiftEvent):
            assert (e.user_id, e.author_id) in seen_enter
    kinds = {type(e) for _, e in events}
    assert {FrameEvent, CommentEvent, GiftEvent, WatchEvent} <= kinds
    # the encoded bytes are exactly the models' JSON
    for (topic, key, value, t), (topic2, e) in zip(iter_encoded(tiny_log), events, strict=True):
        assert topic == topic2 and t == e.ts_ms
        assert value == e.model_dump_json().encode()
        assert key == str(getattr(e, "user_id" if topic == "live.watch" else "author_id")).encode()
    # resume from a timestamp: exactly the suffix
    mid = ts[len(ts) // 2]
    tail = [e.event_id for _, e in iter_events(tiny_log, start_ms=mid)]
    assert tail == [e.event_id for _, e in events if e.ts_ms >= mid]


def test_truth_keys_are_enter_events(tiny_log: Path) -> None:
    truth = read_truth(tiny_log)
    enters = [
        e.event_id
        for t, e in iter_events(tiny_log)
        if isinstance(e, WatchEvent) and e.action == "enter"
    ]
    assert set(enters) == set(truth)


def _copy(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir()
    for n in names:
        shutil.copy(src / n, dst / n)
    return dst


def test_bad_rows_reported_with_line_numbers(tiny_log: Path, tmp_path: Path) -> None:
    d = _copy(
        tiny_log,
        tmp_path / "bad",
        ["click.csv", "gift.csv", "room.csv", "comment.csv", "mmbee_frames.csv"],
    )
    lines = (d / "gift.csv").read_text().splitlines()
    n_gifts = len(lines) - 1
    lines[1] = lines[1].rsplit(",", 1)[0] + ",-5"  # non-positive price
    lines[2] = "1,2,3"  # too few fields
    lines.insert(3, "x,1,2,1746383575573,2")  # not a number
    lines.append("1,1,1,99,2")  # timestamp in seconds, not ms
    (d / "gift.csv").write_text("\n".join(lines) + "\n")
    frames = (d / "mmbee_frames.csv").read_text().splitlines()
    frames[4] = frames[4][:-2]  # latent too short
    (d / "mmbee_frames.csv").write_text("\n".join(frames) + "\n")
    (d / "comment.csv").write_text(
        "user_id,live_id,timestamp\n1,2,1746383575573\n"
    )  # missing column
    b = read_log(d)
    by_file: dict[str, list[tuple[int, str]]] = {}
    for r in b.bad_rows:
        by_file.setdefault(r.file, []).append((r.line, r.reason))
    gift_lines = sorted(line for line, _ in by_file["gift.csv"])
    assert gift_lines == [2, 3, 4, len(lines)]
    reasons = dict(by_file["gift.csv"])
    assert (
        "gift_price" in reasons[2] and "fields" in reasons[3] and "timestamp" in reasons[len(lines)]
    )
    assert len(b.table("gift.csv")) == n_gifts - 2
    assert [line for line, _ in by_file["mmbee_frames.csv"]] == [5]
    assert "missing columns" in by_file["comment.csv"][0][1] and not b.has("comment.csv")
    assert all(str(r).startswith(f"{r.file}:{r.line}: ") for r in b.bad_rows)
    # the good rows still make events, whose ids name their source row (line - 2)
    gift_ids = [e.event_id for t, e in iter_events(b) if t == "live.gifts"]
    assert len(gift_ids) == n_gifts - 2
    good_rows = {line - 2 for line in range(2, len(lines) + 1)} - {r - 2 for r in gift_lines}
    assert {int(i.rsplit(".", 1)[1]) for i in gift_ids} == good_rows


def test_event_ids_survive_rejected_rows(tiny_log: Path, tmp_path: Path) -> None:
    """A rejected click row shifts no other impression's id, so the truth still matches."""
    d = _copy(tiny_log, tmp_path / "bad", ["click.csv", "gift.csv", "mmbee_world.json"])
    (d / "truth").mkdir()
    shutil.copy(tiny_log / "truth" / "impressions.csv", d / "truth" / "impressions.csv")
    lines = (d / "click.csv").read_text().splitlines()
    lines[5] = "garbage"
    (d / "click.csv").write_text("\n".join(lines) + "\n")
    full = {e.event_id: e for _, e in iter_events(tiny_log) if isinstance(e, WatchEvent)}
    cut = {e.event_id: e for _, e in iter_events(d) if isinstance(e, WatchEvent)}
    assert len(cut) == len(full) - 2 and all(full[k] == v for k, v in cut.items())
    truth = read_truth(d)
    assert {k for k, v in cut.items() if v.action == "enter"} <= set(truth)


def test_kuailive_only_directory_replays(tiny_log: Path, tmp_path: Path) -> None:
    d = _copy(
        tiny_log,
        tmp_path / "kl",
        [
            "click.csv",
            "gift.csv",
            "comment.csv",
            "like.csv",
            "room.csv",
            "user.csv",
            "streamer.csv",
        ],
    )
    b = read_log(d)
    assert b.manifest is None and b.log_id.startswith("kl")
    assert any("comment" in n for n in b.notes) and any("frames" in n for n in b.notes)
    topics = {t for t, _ in iter_events(b)}
    assert topics == {"live.watch", "live.gifts"}
    assert read_log(d).log_id == b.log_id  # stable


def test_not_a_log(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="none of KuaiLive"):
        read_log(tmp_path)


@pytest.mark.models
def test_text_embedding_cache_attaches(tmp_path: Path) -> None:
    """`--text-embeddings` caches all-MiniLM-L6-v2 vectors per text; replay attaches them."""
    from mmbee.schemas.types import decode_embedding
    from mmbee.simulator.simulate import simulate

    manifest = simulate(tmp_path, preset_name="tiny", seed=1, text_embeddings=True)
    assert manifest["text_embeddings"]
    b = read_log(tmp_path)
    assert b.text_embeddings is not None and b.texts is not None
    assert b.text_embeddings.shape == (len(b.texts), 384)
    assert np.allclose(np.linalg.norm(b.text_embeddings, axis=1), 1.0, atol=1e-4)
    tids = b.comment_text_ids()
    n = 0
    for _topic, e in iter_events(b, attach_text_embeddings=True):
        if isinstance(e, CommentEvent):
            assert e.text_embedding is not None
            row = int(
                np.flatnonzero(
                    b.table("comment.csv").lines == int(e.event_id.rsplit(".", 1)[1]) + 2
                )[0]
            )
            assert np.array_equal(decode_embedding(e.text_embedding), b.text_embeddings[tids[row]])
            n += 1
            if n > 50:
                break
    with pytest.raises(LogError, match="text-embeddings"):
        _no_cache(tmp_path)


def _no_cache(logdir: Path) -> None:
    (logdir / "mmbee_text_embeddings.npy").rename(logdir / "cache.bak")
    try:
        next(iter_events(logdir, attach_text_embeddings=True))
    finally:
        (logdir / "cache.bak").rename(logdir / "mmbee_text_embeddings.npy")


def test_ids_consistent_across_files(tiny_log: Path) -> None:
    """Every event's live room exists in room.csv with the same streamer, and the event lies
    inside the room's session; users and streamers exist in user.csv / streamer.csv."""
    b = read_log(tiny_log)
    rooms = b.table("room.csv")
    lives = rooms["live_id"].tolist()
    room = {
        lv: (s, a, e)
        for lv, s, a, e in zip(
            lives,
            rooms["streamer_id"].tolist(),
            rooms["start_timestamp"].tolist(),
            rooms["end_timestamp"].tolist(),
            strict=True,
        )
    }
    users = set(b.table("user.csv")["user_id"].tolist())
    assert {s for s, _, _ in room.values()} <= set(b.table("streamer.csv")["streamer_id"].tolist())
    for name, col in (
        ("click.csv", "timestamp"),
        ("gift.csv", "timestamp"),
        ("comment.csv", "timestamp"),
        ("like.csv", "timestamp"),
        ("mmbee_frames.csv", "timestamp"),
        ("mmbee_speech.csv", "start_timestamp"),
    ):
        t = b.table(name)
        if "user_id" in t.columns:
            assert set(t["user_id"].tolist()) <= users, name
        rows = zip(t["live_id"].tolist(), t["streamer_id"].tolist(), t[col].tolist(), strict=True)
        for live, streamer, ts in rows:
            s, a, e = room[live]
            assert s == streamer and a <= ts < e, (name, live, ts)
