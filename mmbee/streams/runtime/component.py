"""What a stream component is: a frozen config, a pure step, a state codec and a registration.

The shape follows bytewax's `stateful_map` (the per-key logic is a function of the state and
one item) and quix-streams' split between Kafka mechanics and user code: the step knows the
product, the envelope (`mmbee.streams.runtime.agent`) knows Faust.

Choice (written down, issue 18): the step may update the state object it is given in place and
return it, as bytewax's mapper may. Copying a segment buffer or a user row per event would cost
more than the agent's whole budget per event; what makes the step safe to replay is that it
touches nothing else (no I/O, no clock, no globals), so the same state and item give the same
`Step`, and the envelope decides when the state is stored and the source acked.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     limit: int
    >>> def count(cfg: Cfg, state: int, item: int) -> Step[int, int]:
    ...     if item > cfg.limit:
    ...         return Step(state, rejects=(Reject("invalid", f"{item} > {cfg.limit}"),))
    ...     return Step(state + 1, outputs=(state + 1,))
    >>> count(Cfg(limit=5), 0, 3)
    Step(state=1, outputs=(1,), rejects=())
    >>> count(Cfg(limit=5), 1, 9).rejects[0].reason
    'invalid'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from mmbee.settings import Settings
    from mmbee.streams.runtime.context import StreamContext

__all__ = ["Component", "Reject", "StateCodec", "Step"]

S = TypeVar("S")
O = TypeVar("O")  # noqa: E741


@dataclass(frozen=True)
class Reject:
    """An item the step refused: the dead-letter reason (`late`, `invalid`, ...) and why."""

    reason: str
    detail: str
    event_id: str | None = None


@dataclass(frozen=True)
class Step(Generic[S, O]):
    """What one pure step returns: the new state, what to publish, what to dead-letter."""

    state: S
    outputs: tuple[O, ...] = ()
    rejects: tuple[Reject, ...] = ()


class StateCodec(Protocol[S]):
    """How a component's state is stored in its table (one row per key)."""

    def dumps(self, state: S) -> bytes: ...

    def loads(self, raw: bytes) -> S: ...


@dataclass(frozen=True)
class Component:
    """One stream component, as the composition root registers it.

    Attributes:
        name: the name `Settings.components` and `mmbee worker --components` use.
        config: builds the component's frozen config from the settings.
        apply: the pure step `(config, state, item) -> Step` (None: the component keeps no
            per-key state of its own, e.g. serving, which reads the joiner's).
        codec: how its table rows are stored (None: no table).
        register: declares the agents, tables, timers and pages on `ctx.app`.
    """

    name: str
    config: Callable[[Settings], Any]
    apply: Callable[..., Step[Any, Any]] | None
    codec: StateCodec[Any] | None
    register: Callable[[StreamContext], None]

    def __call__(self, ctx: StreamContext) -> None:
        """Register on `ctx` (a component is also a register function)."""
        self.register(ctx)
