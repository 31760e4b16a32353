"""Faust-free state cores: segment windows, user and author state, event-time alignment.

Pure data structures and functions that the stream agents keep their per-key state in, and that
the offline trainer and the tests use directly. Nothing here imports Faust, Kafka or the stream
runtime (an import-linter contract says so); an agent wraps a core with decoding, acks, tables
and rebalances (`mmbee.streams.runtime`).

- `segments`: a streamer's rolling segment buffer (open accumulators, closing, lateness).
- `users`: the joiner's per-user state (history, waiting impressions, labels).
- `authors`: a streamer's event-time timeline of watches and gifts.
- `align`: holding items until every source has passed their event time.
- `graph`: the gift graph component's state (graph + dedupe window, one row per user), its step
  and the walk-cache schedule.
- `examples`: the refresh component's buffer of the newest training examples.
"""
