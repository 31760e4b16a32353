"""Scale-out on one machine, for real: two `mmbee worker` processes share 8 partitions of a
simulated log on the session broker (Apache Kafka; `--broker=noida` for noida-db); one is
SIGKILLed halfway; the survivor takes its partitions (and the one-partition gift graph),
recovers their tables from the changelogs, and ends in the same state as a single worker that
read the same log: every segment buffer (closed segments, open segments, watermark, applied
offsets) and the exact gift graph. Redelivered events are absorbed (segment replays are skipped
by offset, a redelivered gift is counted as a duplicate by event id, not dead-lettered).

On Apache Kafka 4.4.0 it passed 20 of 20 runs on 2026-12-07 (08:47-09:07 UTC, shared 2-core box,
load average 3.5-7.0, 40-75 s each), once every topic was provisioned before the workers
started; the one run before that timed out on a start-up race seen on Kafka (a topic Faust
creates at start-up missing from the consumer's first metadata: deploy/RUNBOOK.md section 12),
not on the delivery faults below.

Marked `chaos`, not in the default run (`make test-chaos`; deploy/RUNBOOK.md section 11 says
why), beside `test_chaos.py`, which extends it (one reference run shared by a seeded kill point with 1 worker restarted and with 2
workers, the joiner's examples compared too, and disturbed delivery). On noida-db it passed in
about half the runs on 2026-12-04 and in 9 of 12 on 2026-12-05: in the others a partition that
two workers were given at start (the one-partition `graph.gifts`, say) is never fetched by
either, or a run of records right after the takeover never reaches the graph agent (offsets
1..38 of `graph.gifts` in one run, with offset 0 and 39.. applied), so the survivor's graph
lacks gifts. Both are consumer-side (the records are on the topic; nothing was dead-lettered);
see deploy/RUNBOOK.md section 11. On the afternoon of 2026-12-05 it passed 15 of 15 runs with
the two fetch-drop fixes of that day (mmbee/streams/runtime/compat.py) and 6 of
6 with them disabled. Joined training examples are not compared here: after a failover they also
differ in what the views held at emission (segment references, expansions), which depends on
arrival timing.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamkit import WorkerProcess, buffers, read_topic

from mmbee.graph import build
from mmbee.schemas import DeadLetter, GiftEvent
from mmbee.settings import Settings
from mmbee.simulator.config import preset
from mmbee.simulator.logs import write_log
from mmbee.simulator.reader import iter_events
from mmbee.simulator.replay import replay_log
from mmbee.simulator.world import generate_world
from mmbee.streams.broker import free_port
from mmbee.streams.components.graph import state_digest
from mmbee.streams.deployment import provision

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.chaos]

Start = Callable[[Settings], WorkerProcess]
CONTENT = ("live.frames", "live.comments", "live.asr")


def hashed_text_embeddings(texts: list[str]) -> np.ndarray:
    """Deterministic 384-d vectors per text (the featurizer is not under test here; the
    simulator caches them beside the log as it would cache MiniLM's)."""
    out = np.empty((len(texts), 384), np.float32)
    for i, t in enumerate(texts):
        out[i] = np.random.default_rng(zlib.crc32(t.encode())).normal(0, 0.1, 384)
    return out


def small_log(root: Path, seed: int = 3) -> Path:
    """A one-day world of 24 streamers with enough gifts to make the graph worth checking."""
    cfg = preset("tiny", n_streamers=24)
    cfg = replace(cfg, calibration=replace(cfg.calibration, base_gift_rate=0.02, gifter_share=0.6))
    write_log(
        generate_world(cfg, seed), root, preset_name="tiny", text_embedder=hashed_text_embeddings
    )
    return root


def log_facts(logdir: Path) -> tuple[int, list[str], list[GiftEvent]]:
    """(content events, authors with content, gifts) of the log."""
    n, authors, gifts = 0, set(), []
    for topic, ev in iter_events(logdir):
        if topic in CONTENT:
            n += 1
            authors.add(ev.author_id)  # type: ignore[union-attr]
        elif topic == "live.gifts":
            gifts.append(ev)
    return n, sorted(authors), gifts  # type: ignore[return-value]


def run_settings(base: Settings, name: str, tmp: Path) -> Settings:
    return base.model_copy(
        update=dict(
            topic_prefix=f"{base.topic_prefix}{name}.",
            app_id=f"{base.app_id}-{name}",
            partitions=8,
            components=("segments", "graph"),
            store="rocksdb://",
            data_dir=tmp / name,
            web_port=free_port(),
            log_level="WARNING",
            commit_interval_s=0.5,
            stream_batch_wait_ms=10,
            graph_refresh_interval_s=0.2,
            graph_idle_rebuild_s=0.5,
            metrics_lag_interval_s=1.0,
            # the alignment valve releases held events once input stalls this long; on a loaded
            # 2-core box a stall of seconds happens, and the released events' later siblings are
            # dead-lettered as late in one run and not the other: not what this test is about
            segment_align_wait_ms=60_000,
        )
    )


def other_worker(settings: Settings, tmp: Path, name: str) -> Settings:
    return settings.model_copy(update={"web_port": free_port(), "data_dir": tmp / name})


def status(w: WorkerProcess) -> dict[str, Any]:
    try:
        return w.get("/mmbee/status/")
    except OSError:
        return {}


def processed(w: WorkerProcess, agent: str = "segments") -> int:
    return int(status(w).get("agents", {}).get(agent, {}).get("processed", 0))


def wait(
    cond: Callable[[], bool], what: str, workers: list[WorkerProcess], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for w in workers:
            assert w.proc.poll() is None, f"worker exited while waiting for {what}:\n{w.tail()}"
        if time.monotonic() > deadline:
            tails = "\n---\n".join(w.tail(2000) for w in workers)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.2)


def dead_letters(settings: Settings) -> list[tuple[str, str, str | None]]:
    letters = [DeadLetter.model_validate_json(v) for v in read_topic(settings, "dlq")]
    return sorted((d.agent, d.reason, d.event_id) for d in letters)


def test_two_workers_one_killed_end_like_one(
    broker_settings: Settings, workers: Start, tmp_path: Path
) -> None:
    logdir = small_log(tmp_path / "log")
    n_content, authors, gifts = log_facts(logdir)
    batch_digest = state_digest(build(gifts, broker_settings.graph_configs()[0]))

    # --- reference: one worker reads the whole log ---------------------------------------
    ref = run_settings(broker_settings, "one", tmp_path)
    # every topic, the internal `graph.gifts` and the changelogs included, exists before the
    # workers subscribe: on Apache Kafka a topic Faust creates at start-up can be missing from
    # the consumer's first metadata, and it is then not fetched until the next refresh (Faust's
    # consumer_metadata_max_age_ms, 5 minutes; deploy/RUNBOOK.md section 12)
    provision(ref)
    replay_log(logdir, ref, attach_text_embeddings=True, progress=False)
    single = workers(ref)

    def graph_done(w: WorkerProcess) -> bool:
        g = w.get("/mmbee/graph/") if status(w) else {}
        return g.get("gifts") == len(gifts) and g.get("rebuilt_at_gifts") == len(gifts)

    def single_done() -> bool:
        s = status(single)
        seg = s.get("components", {})
        return (
            processed(single) >= n_content
            and seg.get("segment_buffer_held_events") == 0
            and graph_done(single)
        )

    wait(single_done, "the single worker to read the log", [single], 90)
    expected = buffers(single, authors)
    expected_digest = single.get("/mmbee/graph/")["digest"]
    single.stop()
    assert expected_digest == batch_digest
    assert sum(len(b["closed"]) for b in expected.values()) > 100

    # --- two workers, one killed halfway ---------------------------------------------------
    two = run_settings(broker_settings, "two", tmp_path)
    provision(two)
    replay_log(logdir, two, attach_text_embeddings=True, progress=False)
    w1, w2 = workers(two), workers(other_worker(two, tmp_path, "two-b"))

    def halfway() -> bool:  # both hold partitions, and half the log is through
        a, b = status(w1), status(w2)
        both = bool(a and b) and all(len(s["partitions"]["assigned"]) >= 16 for s in (a, b))
        return both and processed(w1) + processed(w2) >= n_content // 2

    wait(halfway, "both workers sharing the partitions, half the log read", [w1, w2], 60)
    # kill the owner of the one-partition gift graph, so the graph moves too
    graph_topic = f"{two.topic_prefix}graph.gifts:0"
    victim, survivor = (w1, w2) if graph_topic in status(w1)["partitions"]["assigned"] else (w2, w1)
    lost = status(victim)["partitions"]["assigned"]
    through = processed(w1) + processed(w2)
    victim.kill()
    killed_at = time.monotonic()
    assert through < n_content, "the log was through before the kill: nothing left to take over"

    def took_over() -> bool:
        s = status(survivor)
        return bool(s) and s["worker"]["ready"] and set(lost) <= set(s["partitions"]["assigned"])

    wait(took_over, "the survivor to take the dead worker's partitions", [survivor], 60)
    takeover_s = time.monotonic() - killed_at

    def same_state() -> bool:
        return graph_done(survivor) and buffers(survivor, authors) == expected

    try:
        wait(same_state, "the survivor to reach the single worker's state", [survivor], 180)
    except AssertionError:
        got = buffers(survivor, authors)
        diff = {a: (expected[a], got.get(a)) for a in authors if got.get(a) != expected[a]}
        forwarded = {
            GiftEvent.model_validate_json(v).event_id for v in read_topic(two, "graph.gifts")
        }
        raise AssertionError(
            f"{len(diff)} of {len(authors)} buffers differ, e.g. {list(diff.items())[:2]}; "
            f"graph: {survivor.get('/mmbee/graph/')} (of {len(gifts)} gifts; not forwarded: "
            f"{sorted({g.event_id for g in gifts} - forwarded)[:5]}); "
            f"dead letters: {dead_letters(two)[:5]}"
        ) from None
    assert survivor.get("/mmbee/graph/")["digest"] == expected_digest
    assert set(status(survivor)["partitions"]["assigned"]) >= set(lost)
    # redelivered gifts are counted as duplicates, never dead-lettered: the same dead letters
    # as the single run
    assert dead_letters(two) == dead_letters(ref)
    graph = survivor.get("/mmbee/metrics/")["agents"].get("graph", {"counters": {}})
    survivor.stop()
    print(
        f"killed at {through}/{n_content} content events; takeover {takeover_s:.1f} s after "
        f"SIGKILL; {graph['counters'].get('duplicates', 0)} redelivered gifts counted as "
        "duplicates by the survivor's graph"
    )
