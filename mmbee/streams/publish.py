"""Where agents send their outputs: a `Publisher` to Kafka through Faust, or into memory.

Agents publish through the `StreamContext`, never through module-level producers. In a worker
the publisher is `FaustPublisher` (the app's own producer: its sends are flushed before Faust
commits source offsets). `MemoryPublisher` keeps messages in a list; it exists for
`agent.test_context()` runs, which have no broker at all.

Example:
    >>> import asyncio
    >>> pub = MemoryPublisher()
    >>> asyncio.run(pub.send("mmbee.dlq", None, b"{}"))
    >>> pub.sent
    [('mmbee.dlq', None, b'{}')]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import faust

__all__ = ["Publisher", "FaustPublisher", "MemoryPublisher"]


class Publisher(Protocol):
    """Sends one message (raw key and value bytes) to a full topic name."""

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Hand the message to the producer (delivery is confirmed before offsets commit)."""
        ...


class FaustPublisher:
    """Publishes with the Faust app's producer; topic objects are made once per name."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._topics: dict[str, faust.TopicT] = {}

    def _topic(self, name: str) -> faust.TopicT:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = self._app.topic(
                name, key_serializer="raw", value_serializer="raw"
            )
        return topic

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self._topic(topic).send(key=key, value=value)


class MemoryPublisher:
    """Keeps every message in `sent` as (topic, key, value), in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def values(self, topic: str) -> list[bytes]:
        """Values sent to `topic`, in order."""
        return [v for t, _, v in self.sent if t == topic]
