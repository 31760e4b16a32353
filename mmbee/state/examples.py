"""The refresh component's state: the newest joined training examples, without redeliveries.

`train.examples` is read from every partition by each worker that runs `refresh`; after a
restart or a rebalance examples come again. The buffer keeps the newest `max_examples` in arrival
order, skips an event id it holds already, and counts the examples added since the trainer last
took them (`new`), which is what decides whether a refresh is due.

Choice (issue 18): a redelivered example is skipped, not rejected: it is the normal
at-least-once path and there is nothing to dead-letter. An example that left the buffer (older
than the newest `max_examples`) is forgotten, so a very late redelivery is buffered again, as
before the component was split.

Example:
    >>> from mmbee.schemas.scoring import TrainingExample
    >>> ex = lambda i: TrainingExample(event_id=f"e{i}", ts_ms=1_750_000_000_000 + i,
    ...     user_id="u", author_id="a", label_watch=1, label_comment=0, label_gift=0,
    ...     emitted_at_ms=1_750_000_001_000)
    >>> buf = ExampleBuffer(max_examples=2)
    >>> [buf.add(ex(i)) for i in (1, 1, 2, 3)]
    [True, False, True, True]
    >>> [m.event_id for m in buf.examples], buf.new, buf.take()[0].event_id, buf.new
    (['e2', 'e3'], 3, 'e2', 0)
"""

from __future__ import annotations

from collections import deque

from mmbee.schemas.scoring import TrainingExample

__all__ = ["ExampleBuffer"]


class ExampleBuffer:
    """The newest `max_examples` training examples, unique by event id."""

    def __init__(self, max_examples: int) -> None:
        self.examples: deque[TrainingExample] = deque(maxlen=max_examples)
        self.seen: set[str] = set()
        self.new = 0  # added since the last `take`

    def __len__(self) -> int:
        return len(self.examples)

    def add(self, m: TrainingExample) -> bool:
        """Buffer `m` (the oldest leaves when full); False for an id held already."""
        if m.event_id in self.seen:
            return False
        if len(self.examples) == self.examples.maxlen:
            self.seen.discard(self.examples[0].event_id)
        self.examples.append(m)
        self.seen.add(m.event_id)
        self.new += 1
        return True

    def take(self) -> list[TrainingExample]:
        """The buffered examples, oldest first; `new` starts again from 0."""
        self.new = 0
        return list(self.examples)
