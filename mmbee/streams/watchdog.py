"""Dead-member watchdog for the embedded broker: what Kafka's session timeout does, done by peers.

Apache Kafka removes a consumer-group member that stops heartbeating for `session.timeout.ms`
and rebalances its partitions onto the others. noida-db 0.2.3 (the embedded broker) never does:
a SIGKILLed worker stays a member forever, and its partitions are never processed again
(verified with plain aiokafka consumers, static and dynamic members alike). It does implement
KIP-345's admin removal of members (LeaveGroup v3 by `group.instance.id`), which starts the
rebalance.

So in the dev profile every worker runs this watchdog: each `interval_s` it lists its group's
members (DescribeGroups), and for each static member on this host (instance id
`<app_id>@<host>:<web_port>`, see `mmbee.streams.runtime.context.group_instance_id`) tries a TCP connect to
its web port on 127.0.0.1. A member whose port has refused connections for `grace_s`
(the session timeout) is dead (a process that is merely slow still accepts connections), and is
removed from the group. Any surviving worker may do it; removing twice is harmless.
On a real cluster (`member_watchdog=false`, the production default) the broker does this itself.

Example:
    >>> w = DeadMemberDetector(grace_s=6.0)
    >>> w.observe({"m@h:1": False, "m@h:2": True}, now_s=0.0)
    []
    >>> w.observe({"m@h:1": False, "m@h:2": True}, now_s=6.5)
    ['m@h:1']
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from mmbee.streams.runtime.context import Sample, StreamContext, group_instance_id

__all__ = ["DeadMemberDetector", "parse_instance_id", "probe_port", "install"]

log = logging.getLogger("mmbee.streams.watchdog")


def parse_instance_id(instance_id: str) -> tuple[str, int] | None:
    """(host, web port) of an mmbee static member id '<app_id>@<host>:<port>' (None otherwise).

    Example:
        >>> parse_instance_id("mmbee@vm:6066"), parse_instance_id("other-client")
        (('vm', 6066), None)
    """
    _, at, rest = instance_id.rpartition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not host or not port.isdigit():
        return None
    return host, int(port)


def probe_port(port: int, timeout_s: float = 0.5) -> bool | None:
    """True when something accepts TCP connections on 127.0.0.1:`port`, False when the
    connection is refused (nothing listens: the process is gone), None when unsure (timeout)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return False
        except OSError:
            return None
    return True


class DeadMemberDetector:
    """Which members have been unreachable (refused) for at least `grace_s` (pure state).

    Args:
        grace_s: how long a member must refuse connections before it is declared dead.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.removed = 0
        self._refused_since: dict[str, float] = {}

    def observe(self, probes: Mapping[str, bool | None], now_s: float) -> list[str]:
        """Record one round of probes (member -> alive?) and return the members dead now.
        A member that answered, or was not probed, starts over; an unsure probe keeps the
        clock running only if it was already refusing."""
        for member in list(self._refused_since):
            if member not in probes or probes[member]:
                del self._refused_since[member]
        dead = []
        for member, alive in sorted(probes.items()):
            if alive is False:
                since = self._refused_since.setdefault(member, now_s)
                if now_s - since >= self.grace_s:
                    dead.append(member)
        return dead

    def samples(self) -> Iterator[Sample]:
        """Members removed, for `/metrics` (runtime.context.Inspectable)."""
        yield "mmbee_watchdog_members_removed_total", {}, float(self.removed)

    def describe(self) -> dict[str, Any]:
        """Members removed, and those refusing connections now."""
        return {"removed": self.removed, "refusing": sorted(self._refused_since)}

    def forget(self, member: str) -> None:
        """Stop tracking `member` (after it was removed) and count the removal."""
        self._refused_since.pop(member, None)
        self.removed += 1


class _UndecodableFaustMetadata(logging.Filter):
    """Drops kafka-python's warning that it cannot decode a member's metadata: Faust's assignor
    writes its own format, the watchdog only reads `group_instance_id`, and the warning (with
    the whole binary response) would otherwise be logged on every poll."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unable to decode member_")


class _GroupAdmin:
    """A kafka-python admin client, made on first use, used from one executor thread at a time."""

    def __init__(self, ctx: StreamContext) -> None:
        self.settings = ctx.settings
        self._admin: Any = None
        groups_log = logging.getLogger("kafka.admin._groups")
        if not any(isinstance(f, _UndecodableFaustMetadata) for f in groups_log.filters):
            groups_log.addFilter(_UndecodableFaustMetadata())

    def _client(self) -> Any:
        if self._admin is None:
            from kafka import KafkaAdminClient

            self._admin = KafkaAdminClient(
                bootstrap_servers=self.settings.bootstrap_list(),
                client_id=f"{self.settings.app_id}-watchdog",
                request_timeout_ms=5_000,
                **self.settings.kafka_client_kwargs(),
            )
        return self._admin

    def members(self) -> list[str]:
        """group.instance.ids of the group's static members."""
        group = self._client().describe_groups([self.settings.app_id]).get(self.settings.app_id, {})
        return [
            m["group_instance_id"] for m in group.get("members", []) if m.get("group_instance_id")
        ]

    def remove(self, instance_ids: list[str]) -> None:
        from kafka.admin import MemberToRemove

        self._client().remove_group_members(
            self.settings.app_id, [MemberToRemove(group_instance_id=i) for i in instance_ids]
        )

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(OSError):
                self._admin.close()
            self._admin = None


def install(ctx: StreamContext) -> None:
    """Run the watchdog on `ctx.app` when `settings.member_watchdog` (dev default) and static
    membership are on."""
    settings = ctx.settings
    if not settings.member_watchdog or not settings.static_membership:
        return
    from kafka.errors import KafkaError


    me = group_instance_id(settings)
    host = socket.gethostname()
    detector = DeadMemberDetector(grace_s=settings.session_timeout_s)
    admin = _GroupAdmin(ctx)
    ctx.runtimes["watchdog"] = detector

    def check(now_s: float) -> list[str]:
        probes: dict[str, bool | None] = {}
        for member in admin.members():
            where = parse_instance_id(member)
            if member == me or where is None or where[0] != host:
                continue  # only peers on this machine can be probed over loopback
            probes[member] = probe_port(where[1])
        dead = detector.observe(probes, now_s)
        if dead:
            admin.remove(dead)
            for member in dead:
                detector.forget(member)
        return dead

    @ctx.app.timer(settings.heartbeat_interval_s, name="mmbee.watchdog")
    async def watch() -> None:
        now = ctx.monotonic()
        try:
            dead = await asyncio.get_running_loop().run_in_executor(None, check, now)
        except (KafkaError, OSError) as exc:
            log.debug("member watchdog: %r", exc)
            admin.close()  # reconnect next time
            return
        for member in dead:
            log.warning(
                "member_removed instance=%s reason=%s grace_s=%s",
                member,
                "web port refused connections (process gone)",
                settings.session_timeout_s,
            )
