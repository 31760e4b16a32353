"""Where the segment agent's validated decode spends its time, per message, in-process.

Run:   OMP_NUM_THREADS=1 .venv/bin/python bench/decode.py [--authors 200] [--seconds 110]

Data: the messages of bench/ingest.py (precomputed embeddings: 1280-d frames, 384-d comments and
ASR text). For each content topic it times, best of `--repeats` passes over all its messages:

  * decode_us: `EventCodec.decode_topic` (what the agent runs: size check, pydantic JSON parse,
    validation, the embedding validator's base64 decode and finiteness check);
  * plain_parse_us: the same JSON parsed by a pydantic model with the same fields as plain
    strings and ints (the parse alone, the floor of any validated decode);
  * base64_us / finite_check_us: the embedding's base64 decode and the finiteness check alone.

`validation_overhead_us` = decode_us - plain_parse_us. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pybase64
from pydantic import BaseModel, ConfigDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

from ingest import live_messages  # noqa: E402

from mmbee.schemas.types import _tiny_weights  # noqa: E402
from mmbee.streams.codec import EventCodec  # noqa: E402


class _PlainEvent(BaseModel):
    """The fields every content event has, as plain types (no validators)."""

    model_config = ConfigDict(extra="forbid")
    event_id: str
    ts_ms: int
    live_id: str
    author_id: str


class _PlainFrame(_PlainEvent):
    embedding: str | None = None
    image_jpeg: str | None = None


class _PlainText(_PlainEvent):
    user_id: str | None = None
    text: str
    text_embedding: str | None = None
    end_ms: int | None = None
    language: str | None = None
    audio_event_id: str | None = None


def _per_item_us(fn: Callable[[Any], Any], items: list[Any], repeats: int) -> float:
    """Best of `repeats` passes of `fn` over `items`, in us per item."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t0)
    return round(best / len(items) * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=110)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    codec = EventCodec()
    by_topic: dict[str, list[bytes]] = {}
    for _, topic, _, value in live_messages(args.authors, args.seconds):
        by_topic.setdefault(topic, []).append(value)
    result: dict[str, Any] = {"messages": sum(len(v) for v in by_topic.values())}
    for topic, raws in sorted(by_topic.items()):
        n, plain = len(raws), (_PlainFrame if topic == "live.frames" else _PlainText)
        field = "embedding" if topic == "live.frames" else "text_embedding"
        wires = [getattr(plain.model_validate_json(r), field) for r in raws]
        vecs = [np.frombuffer(pybase64.b64decode(w), dtype="<f4") for w in wires]
        weights = _tiny_weights(vecs[0].shape[0])  # the embedding validator's own check
        decode = _per_item_us(partial(codec.decode_topic, topic), raws, args.repeats)
        parse = _per_item_us(plain.model_validate_json, raws, args.repeats)
        result[topic] = {
            "n": n,
            "mean_bytes": round(sum(map(len, raws)) / n),
            "decode_us": decode,
            "plain_parse_us": parse,
            "validation_overhead_us": round(decode - parse, 2),
            "base64_us": _per_item_us(
                partial(pybase64.b64decode, validate=True), wires, args.repeats
            ),
            "finite_check_us": _per_item_us(weights.dot, vecs, args.repeats),
        }
    total = result["messages"]
    result["decode_us_mean"] = round(
        sum(result[t]["decode_us"] * result[t]["n"] for t in by_topic) / total, 2
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
