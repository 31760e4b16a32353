"""Every patch of a faust/mode/aiokafka internal, and every private read, in one place.

mmbee runs on faust-streaming, mode-streaming and aiokafka, and it needs seven changes to their
internals for at-least-once delivery, for throughput, and for the embedded broker. It also reads
four private attributes that have no public accessor. All of them were written against the
versions in `PINS`, which pyproject.toml pins exactly. `install()` checks the installed versions
at start-up and refuses to run on any other, with a message that names them. Set
`MMBEE_FAUST_PATCHES=false` (`Settings.faust_patches`) to run another version without the
patches. The private reads then raise `CompatError` when an attribute has moved, instead of
quietly reading a default.

The patches (each section below gives the reason, the upstream behaviour and the test):

| patch | what it fixes | test |
|---|---|---|
| full flush | offsets committed before buffered changelog writes were sent | test_producer_flush.py |
| sources resume after flow | source messages fetched during recovery's seek deleted | test_recovery_order.py, seek_race.py |
| fetch scope | a fetch with no active partition takes every partition's records | test_fetch_scope.py |
| inline hand-off | four tasks per message between consumer and stream (speed) | test_handoff.py |
| fetch wait | an idle consumer spins on noida-db, which ignores fetch.max.wait.ms | test_fetch_wait.py |
| stale acks | the ack of an older generation's message commits past messages not yet redelivered | test_stale_acks.py |
| fetch max wait | Faust hard-codes a 1.5 s fetch.max.wait.ms: on Kafka a record can wait that long | test_compat.py |

The private reads: Faust's current-event contextvar (table writes inside batches), the
consumer's read and committed offsets, the aiokafka client behind Faust's consumer thread (to
pause one partition without Faust's fetch-dropping pause), and aiokafka's metadata refresh.

Upgrading one of the pinned packages: bump the pin in `PINS` and in pyproject.toml, read the
upstream code each section names, and run `pytest tests/streams` (the tests above fail when a
patch no longer applies or no longer fixes what it fixed). Upstream: the recovery order is
related to faust-streaming/faust#216 and #217, which reordered `_resume_streams` but kept the
buffer-clearing flow resume; no upstream report exists yet for the other five.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmbee.settings import Settings

__all__ = [
    "PINS",
    "CompatError",
    "IncompatibleVersionError",
    "check_versions",
    "committed_offsets",
    "fetch_scope_installed",
    "force_metadata_update",
    "full_flush_installed",
    "inline_handoff_installed",
    "install",
    "install_fetch_scope",
    "install_fetch_wait",
    "install_full_flush",
    "install_inline_handoff",
    "install_sources_resume_after_flow",
    "install_stale_ack_refusal",
    "install_fetch_max_wait",
    "installed_fetch_max_wait_ms",
    "installed_fetch_wait_ms",
    "installed_versions",
    "kafka_client",
    "pause_fetching",
    "read_offsets",
    "set_current_event",
    "sources_resume_after_flow",
    "sources_resume_after_flow_installed",
    "stale_ack_refusal_installed",
    "uninstall_inline_handoff",
]

log = logging.getLogger("mmbee.streams.runtime.compat")

# The versions every patch and private read below was written and tested against.
PINS: Mapping[str, str] = {
    "faust-streaming": "0.15.3",
    "mode-streaming": "0.7.1",
    "aiokafka": "0.14.0",
}


class CompatError(RuntimeError):
    """A private attribute mmbee reads is not where the pinned version keeps it."""


class IncompatibleVersionError(CompatError):
    """The installed faust/mode/aiokafka differ from `PINS` while the patches are on."""


def installed_versions() -> dict[str, str | None]:
    """The installed version of each pinned package (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in PINS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_versions(*, patches: bool = True) -> list[str]:
    """Raise `IncompatibleVersionError` when an installed version differs from `PINS` and the
    patches are on; with them off, log the differences. Returns the differences."""
    found = installed_versions()
    wrong = [f"{name} {found[name] or 'missing'} (pinned {pin})" for name, pin in PINS.items()
             if found[name] != pin]
    if wrong and patches:
        raise IncompatibleVersionError(
            "mmbee patches internals of faust-streaming, mode-streaming and aiokafka and was "
            f"tested only with {', '.join(f'{n}=={v}' for n, v in PINS.items())}; installed: "
            f"{'; '.join(wrong)}. Install the pinned versions (pip install -e .), or set "
            "MMBEE_FAUST_PATCHES=false to run without the patches (mmbee/streams/runtime/"
            "compat.py says what each one fixes)."
        )
    if wrong:
        log.warning("running without mmbee's Faust patches on %s", "; ".join(wrong))
    return wrong


def install(settings: Settings) -> None:
    """Check the versions, then install the worker's patches for this process (idempotent).

    Called by the app factory. With `settings.faust_patches` off nothing is installed and the
    inline hand-off is undone; the fetch wait is installed by process entry points only
    (`install_fetch_wait`), for the embedded broker."""
    check_versions(patches=settings.faust_patches)
    if not settings.faust_patches:
        uninstall_inline_handoff()
        return
    install_full_flush()  # offsets are committed only after the buffered writes were sent
    install_sources_resume_after_flow()  # no source message is fetched before recovery's seek
    install_fetch_scope()  # a fetch never takes records of partitions Faust has paused
    install_stale_ack_refusal()  # an older generation's message is never acked (redelivered)
    install_fetch_max_wait(settings.consumer_fetch_max_wait_ms)  # Kafka's long-poll bound
    if settings.faust_inline_handoff:
        install_inline_handoff()
    else:
        uninstall_inline_handoff()


def _private(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise CompatError(
            f"{type(obj).__module__}.{type(obj).__qualname__} has no {name}: this is not the "
            f"code mmbee/streams/runtime/compat.py was written for ({installed_versions()})"
        ) from None


# --- private reads --------------------------------------------------------------------------


def set_current_event(event: Any | None) -> None:
    """Make `event` (None: no event) Faust's current event in this task.

    Table writes take their changelog partition from the current event. Inside
    `stream.take()`-style batches the buffered events were consumed by another task, so an agent
    that writes a table while applying a batch sets each event first. faust 0.15.3 keeps it in
    the contextvar `faust.streams._current_event` and has no public setter."""
    import faust.streams

    var = _private(faust.streams, "_current_event")
    var.set(None if event is None else weakref.ref(event))


def read_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """Faust's next offset to read, per TP (`Consumer._read_offset`, no public accessor)."""
    return _private(consumer, "_read_offset")


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """The committed offsets Faust fetched at assignment and those it committed since
    (`Consumer._committed_offset`, no public accessor)."""
    return _private(consumer, "_committed_offset")


def kafka_client(consumer: Any) -> tuple[Any, Any] | None:
    """(consumer thread, aiokafka client) behind Faust's consumer; None when there is none yet
    (not started, or an app under `test_context` without a Kafka transport)."""
    from faust.exceptions import ConsumerNotStarted
    from faust.transport.consumer import ThreadDelegateConsumer

    if not isinstance(consumer, ThreadDelegateConsumer):
        return None
    thread = _private(consumer, "_thread")
    try:
        return thread, thread._ensure_consumer()
    except ConsumerNotStarted:
        return None


async def pause_fetching(consumer: Any, tp: Any, paused: bool) -> bool:
    """Pause (or resume) fetching one partition at the aiokafka client, in the consumer's thread.

    aiokafka's own pause drops what was buffered for the partition and later fetches again from
    the consumed position. Faust's `Consumer.pause_partitions` must not be used mid-stream: its
    `getmany` silently drops the records of a fetch in flight when the partition was paused
    (faust 0.15.3), and they never come back. False when there is no Kafka client, or the
    partition is not assigned (any more)."""
    from aiokafka import TopicPartition
    from aiokafka.errors import IllegalStateError

    found = kafka_client(consumer)
    if found is None:
        return False
    thread, client = found
    fn = client.pause if paused else client.resume
    try:
        await thread.call_thread(fn, TopicPartition(tp.topic, tp.partition))
    except (AssertionError, KeyError, IllegalStateError):
        return False
    return True


async def force_metadata_update(client: Any) -> None:
    """Refresh an `AIOKafkaConsumer`'s cluster metadata now (aiokafka 0.14 has no public call;
    `partitions_for_topic` answers from the cached metadata only)."""
    await _private(client, "_client").force_metadata_update()


# --- patch 1: full flush (faust.transport.producer.ProducerBuffer) --------------------------
# Faust commits source offsets after `producer.flush()`, which first drains the app's
# `ProducerBuffer` (table changelog writes and `send_soon` messages wait there before they are
# handed to the Kafka client) and then flushes the client. In faust-streaming 0.15.3
# `ProducerBuffer.flush` gives up as soon as 0.1 s pass without a message leaving the buffer
# (`flush_atmost(None)` returns on its first timeout), and it does not count the message the
# buffer's task is handing over at that moment. On a busy worker a hand-over can take longer
# than that; offsets are then committed while changelog writes of the events they cover are
# still in the buffer, and a SIGKILL at that moment loses those writes for good. Shown with a
# client whose hand-over takes 0.25 s: the original flush returned with 3 of 4 messages still
# buffered (tests/streams/test_producer_flush.py checks the patched flush against it).
# The patch replaces `ProducerBuffer.flush` (and wraps `_send_pending` to count hand-overs in
# flight) so a flush returns only when the buffer is empty and nothing is being handed over.

_FLUSH_ATTR = "_mmbee_full_flush"
_INFLIGHT = "_mmbee_inflight"


def full_flush_installed() -> bool:
    """Whether `install_full_flush` patched this process's Faust."""
    from faust.transport.producer import ProducerBuffer

    return bool(getattr(ProducerBuffer.flush, _FLUSH_ATTR, False))


def install_full_flush() -> None:
    """Patch Faust's `ProducerBuffer` for the whole process (idempotent)."""
    from faust.transport.producer import ProducerBuffer

    if full_flush_installed():
        return
    send_pending = ProducerBuffer._send_pending

    @functools.wraps(send_pending)
    async def _send_pending(self: Any, fut: Any) -> None:
        setattr(self, _INFLIGHT, getattr(self, _INFLIGHT, 0) + 1)
        try:
            await send_pending(self, fut)
        finally:
            setattr(self, _INFLIGHT, getattr(self, _INFLIGHT) - 1)

    async def flush(self: Any) -> None:
        """Wait until every buffered message was handed to the Kafka client."""
        while self.size or getattr(self, _INFLIGHT, 0):
            if self.state != "running":
                if self.size:
                    raise RuntimeError("Cannot flush: Producer not Running")
                return
            self.message_sent.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)

    setattr(flush, _FLUSH_ATTR, True)
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]


# --- patch 2: sources resume after flow (faust.tables.recovery.Recovery) --------------------
# faust-streaming 0.15.3 ends table recovery (`Recovery.on_recovery_completed`, and
# `Recovery._resume_streams` for an app without tables) in this order:
#   1. `consumer.resume_partitions(sources)`: every assigned partition that is not a changelog;
#   2. `await consumer.perform_seek()`: a round trip to the consumer thread;
#   3. `app.flow_control.resume()`, which empties every stream buffer (mode's FlowControlEvent);
#   4. `consumer.resume_flow()`.
# After a recovery from the changelog the fetcher is already running at step 2, so it hands the
# streams the source messages the client fetched from the committed offsets, and step 3 deletes
# those the agents have not taken yet. The client's positions have passed them: they are never
# fetched again, nothing is logged, and the worker idles behind an uncommitted gap until its
# next restart (the SIGKILL-restart test failed about 1 start in 5 under a CPU burst; a failing
# run's final resume dropped 59 buffered messages). tests/streams/seek_race.py forces the race
# on every start; without this patch the restarted worker lost part of its backlog in 3 of 3.
# The patch wraps both methods so that, while they run, source partitions are recorded instead
# of resumed, and resumed right after the flow resume of step 3 with nothing awaited in between.
# The seek then happens while no source message can reach a stream. Changelog partitions resume
# as before; a resume is skipped when a rebalance started meanwhile (the generation changed).
# Making step 3 keep the buffers instead (tried 2026-12-05, backed out) kept messages fetched
# before the seek, which the seek then had the client fetch a second time.

_RESUME_ATTR = "_mmbee_sources_resume_after_flow"
_RESUME_METHODS = ("on_recovery_completed", "_resume_streams")
# the calls, in this order, that each wrapped method must make (whitespace-free)
_RESUME_ORDER = ("consumer.resume_partitions(", ".perform_seek()", "flow_control.resume()")


@contextlib.contextmanager
def _deferred_source_resume(recovery: Any, generation_id: int) -> Iterator[None]:
    """While open, `recovery.app.consumer.resume_partitions` resumes changelog partitions only;
    the others are resumed by the next `app.flow_control.resume()`, right after it empties the
    stream buffers, and at the end if no flow resume came."""
    app = recovery.app
    consumer, flow = app.consumer, app.flow_control
    resume_partitions, flow_resume = type(consumer).resume_partitions, type(flow).resume
    deferred: set[Any] = set()

    def resume_deferred() -> None:
        if deferred and app.consumer_generation_id == generation_id:
            resume_partitions(consumer, deferred & set(consumer.assignment()))
        deferred.clear()

    def record(tps: Iterable[Any]) -> None:
        tps = set(tps)
        changelogs = {tp for tp in tps if recovery._is_changelog_tp(tp)}
        deferred.update(tps - changelogs)
        if changelogs:
            resume_partitions(consumer, changelogs)

    def resume_flow() -> None:
        flow_resume(flow)  # empties the stream buffers: no source message can be in them
        resume_deferred()

    consumer.resume_partitions, flow.resume = record, resume_flow
    try:
        yield
        resume_deferred()
    finally:
        del consumer.resume_partitions, flow.resume


def sources_resume_after_flow(
    method: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    """Wrap a `Recovery` method `(self, generation_id=0)` as `install_...` does."""

    @functools.wraps(method)
    async def wrapped(self: Any, generation_id: int = 0) -> None:
        with _deferred_source_resume(self, generation_id):
            await method(self, generation_id=generation_id)

    setattr(wrapped, _RESUME_ATTR, True)
    return wrapped


def sources_resume_after_flow_installed() -> bool:
    """Whether `install_sources_resume_after_flow` patched this process's Faust."""
    from faust.tables.recovery import Recovery

    return all(getattr(getattr(Recovery, m), _RESUME_ATTR, False) for m in _RESUME_METHODS)


def _calls_in_order(source: str) -> bool:
    flat = "".join(source.split())
    at = [flat.find(call) for call in _RESUME_ORDER]
    return all(i >= 0 for i in at) and at == sorted(at)


def install_sources_resume_after_flow() -> bool:
    """Patch Faust's `Recovery` for the whole process (idempotent). Returns False, with a
    warning, and leaves Faust unpatched when a method does not make the calls above in that
    order (only possible with the version check off)."""
    from faust.tables.recovery import Recovery

    if sources_resume_after_flow_installed():
        return True
    originals = {m: getattr(Recovery, m) for m in _RESUME_METHODS}
    unknown = [m for m, f in originals.items() if not _calls_in_order(inspect.getsource(f))]
    if unknown:
        log.warning(
            "faust Recovery.%s is not the code mmbee patches; left unpatched (source messages "
            "fetched during the final seek may be dropped)",
            "/".join(unknown),
        )
        return False
    for name, original in originals.items():
        setattr(Recovery, name, sources_resume_after_flow(original))
    return True


# --- patch 3: fetch scope (faust.transport.consumer.ThreadDelegateConsumer._getmany) ---------
# Faust's fetcher (0.15.3) asks the consumer thread for records with
# `fetched_records(active_partitions, timeout)`, passing its live set of active partitions.
# aiokafka's `Fetcher.fetched_records` takes records of the partitions in that set, but of
# *every* partition when the set is empty (`if partitions and tp not in partitions: continue`).
# The set becomes empty while the call waits when Faust pauses what it holds: at the end of
# table recovery it pauses the changelogs it read, and until the sources are resumed (patch 2)
# nothing is active. A fetch in flight then takes the source records the client fetched in the
# background, and Faust's `getmany` drops every record of a partition that is not active; the
# positions have passed them and nothing is logged. With only patch 2, the restarted worker of
# test_worker.py::test_nothing_fetched_while_recovery_seeks_is_lost took none of its
# 45-message backlog in 5 of 22 runs. The patch passes a view of the same live set that is
# never false: an empty set takes nothing and the call waits; membership is still read live.

_SCOPE_ATTR = "_mmbee_fetch_scope"


class ActiveView(AbstractSet[Any]):
    """A live view of Faust's active-partition set whose truth value is always True."""

    __slots__ = ("tps",)

    def __init__(self, tps: AbstractSet[Any]) -> None:
        self.tps = tps

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self.tps

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.tps))

    def __len__(self) -> int:
        return len(self.tps)


def fetch_scope_installed() -> bool:
    """Whether `install_fetch_scope` patched this process's Faust."""
    from faust.transport.consumer import ThreadDelegateConsumer

    return bool(getattr(ThreadDelegateConsumer._getmany, _SCOPE_ATTR, False))


def install_fetch_scope() -> None:
    """Patch Faust's `ThreadDelegateConsumer._getmany` for the whole process (idempotent)."""
    from faust.transport.consumer import ThreadDelegateConsumer

    if fetch_scope_installed():
        return
    original = ThreadDelegateConsumer._getmany

    @functools.wraps(original)
    async def _getmany(self: Any, active_partitions: Any, timeout: float) -> Any:
        if active_partitions is not None:  # None: a client-only app, which takes everything
            active_partitions = ActiveView(active_partitions)
        return await original(self, active_partitions, timeout)

    setattr(_getmany, _SCOPE_ATTR, True)
    ThreadDelegateConsumer._getmany = _getmany  # type: ignore[method-assign]


# --- patch 4: inline hand-off (faust.transport.consumer.Consumer.wait_first) -----------------
# faust-streaming 0.15.3 passes every fetched message to the conductor with
# `await self.wait_first(callback(message), self.suspend_flow.wait())` (`_drain_messages`):
# four tasks per message (the callback, the suspend wait, the service's stopped and crashed
# waits), an `asyncio.wait` and three cancellations, so that a callback blocked on a full
# stream buffer gives up when a rebalance suspends the flow. The callback almost never blocks.
# In a py-spy profile of the segment worker (bench/ingest.py, 2026-12-05) `wait_first` took
# about 15% of the main thread; with the patch the same benchmark ran 2.1x faster for a trivial
# agent and 1.6x for the segment agent (docs/streams.md). While the flow is not suspended the
# callback runs inline up to its first suspension point; if it suspends (buffer full) it goes
# on as a task under the original `wait_first`, so a suspend, stop or crash interrupts it as
# before. `Settings.faust_inline_handoff` turns it off.

_HANDOFF_ATTR = "_mmbee_inline_handoff"
_HANDOFF_CALL = "self.wait_first(callback(message),self.suspend_flow.wait())"  # no whitespace


class _Resumed:
    """Awaiting it continues `coro`, which was stepped once by hand and yielded `first`."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, out = self.coro, self.first
        while True:
            try:
                sent = yield out  # the future the coroutine waits on, for the task to wait on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - every throw (cancellation too) goes to where it waits
                try:
                    out = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    out = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def inline_handoff_installed() -> bool:
    """Whether `install_inline_handoff` patched this process's Faust consumer."""
    from faust.transport.consumer import Consumer

    return bool(getattr(Consumer.wait_first, _HANDOFF_ATTR, False))


def install_inline_handoff() -> bool:
    """Patch Faust's `Consumer.wait_first` for the whole process (idempotent). Returns False,
    with a warning, and leaves Faust unpatched when its drain loop is not the one above."""
    from faust.transport.consumer import Consumer
    from mode.services import WaitResults

    if inline_handoff_installed():
        return True
    try:
        source = inspect.getsource(Consumer._drain_messages)
    except (OSError, TypeError):
        source = ""
    if _HANDOFF_CALL not in "".join(source.split()):
        log.warning("faust's drain loop changed: the inline hand-off is not installed")
        return False
    original = Consumer.wait_first

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        if len(coros) != 2 or timeout is not None or self.suspend_flow.is_set():
            return await original(self, *coros, timeout=timeout)
        callback, suspended = coros
        if not (inspect.iscoroutine(callback) and inspect.iscoroutine(suspended)):
            return await original(self, *coros)
        try:
            first = callback.send(None)
        except StopIteration as done:  # handed off without waiting: the common case
            suspended.close()
            return WaitResults([callback], [done.value], False)
        except BaseException:
            suspended.close()
            raise
        return await original(self, _Resumed(callback, first), suspended)

    setattr(wait_first, _HANDOFF_ATTR, True)
    wait_first.__wrapped__ = original  # type: ignore[attr-defined]
    Consumer.wait_first = wait_first  # type: ignore[method-assign]
    return True


def uninstall_inline_handoff() -> None:
    """Restore Faust's own `Consumer.wait_first` (tests, and the setting turned off)."""
    from faust.transport.consumer import Consumer

    if inline_handoff_installed():
        Consumer.wait_first = Consumer.wait_first.__wrapped__  # type: ignore[attr-defined,method-assign]


# --- patch 5: fetch wait, noida-db only (aiokafka.consumer.fetcher.Fetcher) ------------------
# Apache Kafka holds a fetch until data arrives or fetch.max.wait.ms passes, so an idle
# consumer costs nothing. noida-db 0.2.3 answers every fetch at once, empty or not, and aiokafka
# re-fetches immediately: an idle Faust worker spins at ~0.9 of a core (2-core dev box). The
# patch makes the consumer wait `wait_ms` after a fetch that brought no records, which is what
# the broker would have done. It patches the whole process, so only process entry points call
# it (the worker, and the ScoreClient of mmbee/jobs/stack.py), and only for the dev profile's
# embedded broker (`Settings.embedded_fetch_wait_ms`, 0 on Kafka).

_WAIT_ATTR = "_mmbee_fetch_wait_ms"


def install_fetch_wait(wait_ms: int) -> None:
    """Make aiokafka consumers in this process wait `wait_ms` after an empty fetch (0: undo)."""
    from aiokafka.consumer.fetcher import Fetcher

    original = getattr(Fetcher._proc_fetch_request, "__wrapped__", Fetcher._proc_fetch_request)
    if wait_ms <= 0:
        Fetcher._proc_fetch_request = original
        return
    delay_s = wait_ms / 1000.0

    @functools.wraps(original)
    async def proc_fetch_request(self: Any, assignment: Any, node_id: Any, request: Any) -> bool:
        # `needs_wakeup` is False when the response added no records (and raised no error the
        # consumer must see); the task still counts as in flight for this node while it sleeps,
        # so no new fetch goes out: a client-side long-poll.
        needs_wakeup = bool(await original(self, assignment, node_id, request))
        if not needs_wakeup and assignment.active:
            try:
                await asyncio.sleep(delay_s)
            except asyncio.CancelledError:
                return False  # like the original: a cancelled fetch (close, unassignment) ends
        return needs_wakeup

    setattr(proc_fetch_request, _WAIT_ATTR, wait_ms)
    Fetcher._proc_fetch_request = proc_fetch_request


def installed_fetch_wait_ms() -> int:
    """The wait currently installed (0 when aiokafka is unpatched)."""
    from aiokafka.consumer.fetcher import Fetcher

    return int(getattr(Fetcher._proc_fetch_request, _WAIT_ATTR, 0))


# --- patch 6: stale acks (faust.transport.consumer.Consumer.ack) ----------------------------
# faust-streaming 0.15.3's stream iterator (`Stream.__aiter__`) skips a message fetched under an
# older consumer generation (`message.generation_id != app.consumer_generation_id`) and acks it,
# "otherwise the lag would increase". After a rebalance the partition's owner, this worker or
# another, has sought to the committed offset and receives the message again; the skipped copy
# must not count. But `Consumer.ack` books the stale offset as done, and `_new_offset` then
# commits past messages the new generation has not delivered yet:
#   - the committed offset is C and the stale message is C+1: `_new_offset`'s head-gap test is
#     `min(acked) - committed > 1`, off by one, so it commits C+2 with C not delivered again yet;
#   - no committed offset (a new group, or 0, which `perform_seek` stores as None): no head-gap
#     test at all, so a stale ack at offset 150 commits 151 over 0..149;
#   - the stale offset fills a gap of the new generation's acks (its own copy's ack is then
#     refused as "already acked"), so the commit covers it before it was processed again.
# A crash or another rebalance before the new generation processes those messages loses them:
# the next owner starts at the committed offset. tests/streams/test_stale_acks.py shows all
# three with Faust's own consumer bookkeeping, and through the broker that a consumer of the
# group then starts past a message it never received. The patch makes `Consumer.ack` refuse
# a message of another generation (no generation: tests, channels: acked as before). Nothing is
# lost by refusing: every rebalance (Faust's aiokafka groups are eager) revokes every
# partition and seeks the reassigned ones to the committed offset, so whatever the stale
# message was is redelivered in the current generation; mmbee's agents already treat stale
# events so (runtime/agent.py, `Envelope.live`).

_STALE_ATTR = "_mmbee_stale_ack_refusal"


def stale_ack_refusal_installed() -> bool:
    """Whether `install_stale_ack_refusal` patched this process's Faust."""
    from faust.transport.consumer import Consumer

    return bool(getattr(Consumer.ack, _STALE_ATTR, False))


def install_stale_ack_refusal() -> None:
    """Patch Faust's `Consumer.ack` to refuse messages of an older generation (idempotent)."""
    from faust.transport.consumer import Consumer

    if stale_ack_refusal_installed():
        return
    ack = Consumer.ack

    @functools.wraps(ack)
    def guarded_ack(self: Any, message: Any) -> bool:
        generation = getattr(message, "generation_id", None)
        if generation is not None and generation != self.app.consumer_generation_id:
            return False  # redelivered to the partition's owner in the current generation
        return bool(ack(self, message))

    setattr(guarded_ack, _STALE_ATTR, True)
    Consumer.ack = guarded_ack  # type: ignore[method-assign]


# --- patch 7: fetch max wait (faust.transport.drivers.aiokafka._create_worker_consumer) -------
# faust-streaming 0.15.3 builds its worker consumer with `fetch_max_wait_ms=1500`, hard-coded,
# and no Faust setting reaches it. aiokafka keeps one fetch in flight per broker and leaves out
# of it the partitions whose records Faust has not taken yet; Apache Kafka holds that fetch until
# data arrives for a partition *in* it or the wait passes. A record of a left-out partition then
# waits up to 1.5 s: bench/serve.py on Kafka saw 30-38 fetches per run held 0.3-1.6 s and the
# freshness samples spread evenly up to ~1.5 s (RUNBOOK section 12; noida-db answers every fetch
# at once, so it never showed). The patch sets the worker consumer's wait to
# `Settings.consumer_fetch_max_wait_ms` (100 ms) before aiokafka builds its fetcher from it
# (`AIOKafkaConsumer.start`); an idle worker then sends ~10 empty fetches a second per broker.

_MAX_WAIT_ATTR = "_mmbee_fetch_max_wait_ms"
_MAX_WAIT_CALL = "fetch_max_wait_ms=1500,"  # in _create_worker_consumer, whitespace removed


def installed_fetch_max_wait_ms() -> int | None:
    """The worker consumer's fetch wait this process installed (None: Faust's 1.5 s)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    return getattr(AIOKafkaConsumerThread._create_worker_consumer, _MAX_WAIT_ATTR, None)


def install_fetch_max_wait(wait_ms: int) -> bool:
    """Make Faust's worker consumer wait at most `wait_ms` per fetch (re-installable with
    another value). Returns False, with a warning, over another `_create_worker_consumer`."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer
    original = getattr(create, "__wrapped__", create)
    try:
        source = inspect.getsource(original)
    except (OSError, TypeError):
        source = ""
    if _MAX_WAIT_CALL not in "".join(source.split()):
        log.warning("faust's worker consumer changed: its fetch wait is left as Faust sets it")
        return False

    @functools.wraps(original)
    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        _private(consumer, "_fetch_max_wait_ms")  # read by AIOKafkaConsumer.start()
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    setattr(_create_worker_consumer, _MAX_WAIT_ATTR, wait_ms)
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    return True
