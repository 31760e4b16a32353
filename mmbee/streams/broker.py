"""The embedded Kafka-protocol broker for development, tests and the demo.

One small interface (`EmbeddedBroker`) with one implementation today: noida-db, a Rust binary
from PyPI that speaks the Kafka protocol, keeps its data in a directory and recovers Faust
tables exactly. (Tansu, the other PyPI broker tried here, under-reports end offsets and makes
Faust lose table rows on recovery; see docs/decisions.md.) Production points at Apache Kafka
and never starts one of these.

Example:
    >>> with NoidaBroker(data_dir=Path("/tmp/b"), port=free_port()) as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:41234
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Protocol

from mmbee.settings import Settings

__all__ = [
    "EmbeddedBroker",
    "BrokerError",
    "BrokerUsage",
    "StoreWatch",
    "NoidaBroker",
    "free_port",
    "process_usage",
    "serve_embedded_broker",
    "wait_until_answers",
]

LOOPBACK = "127.0.0.1"

log = logging.getLogger(__name__)

REWRITE_CPU_S_PER_GIB = 4.3
"""CPU seconds noida-db spends per GiB of store file on each whole-store rewrite (bench/broker.py,
2026-12-05, 2-core dev box)."""
REWRITE_PEAK_RSS_RATIO = 1.6
"""Its peak RSS during a rewrite, as a multiple of the store file (same measurement)."""


class BrokerError(RuntimeError):
    """The embedded broker could not be started, or stopped answering."""


@dataclass(frozen=True)
class BrokerUsage:
    """What the embedded broker process has used so far (Linux `/proc`; None where unreadable).

    noida-db keeps its whole Kafka store in one JSON file (`kafka.json`, each record byte written
    as a decimal number) and rewrites all of it after writes: its CPU and memory follow the size
    of that file, not the traffic (deploy/RUNBOOK.md section 11). The benchmarks report these
    figures beside their own so a reader sees what the broker took from the shared cores.

    Attributes:
        cpu_s: user + system CPU seconds since the broker started.
        rss_mib: resident memory now.
        store_mib: size of its store file(s) in the data directory now.
    """

    cpu_s: float | None
    rss_mib: float | None
    store_mib: float


def process_usage(pid: int) -> tuple[float | None, float | None]:
    """(CPU seconds, RSS MiB) of process `pid` from /proc, or Nones off Linux / once it exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime (fields 14, 15)
    rss = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")), None)
    return cpu_s, (int(rss) / 1024 if rss is not None else None)


class StoreWatch:
    """Warns when noida-db's store file passes `threshold_mib`, then at each doubling.

    Every write makes noida-db rewrite the whole file, so its CPU and memory grow with the file,
    not with the traffic. A long replay into one data directory quietly ends with a broker that
    takes a core and gigabytes of RAM. The warning tells the operator before that happens.

    Example:
        >>> watch = StoreWatch(threshold_mib=1024)
        >>> watch.check(900.0) is None, watch.check(1100.0) is not None, watch.check(1500.0)
        (True, True, None)
    """

    def __init__(self, threshold_mib: float) -> None:
        self.next_mib = threshold_mib if threshold_mib > 0 else float("inf")

    def check(self, store_mib: float) -> str | None:
        """The warning for a store of `store_mib`, if it passed the next mark (else None)."""
        if store_mib < self.next_mib:
            return None
        while self.next_mib <= store_mib:
            self.next_mib *= 2
        cpu_s = REWRITE_CPU_S_PER_GIB * store_mib / 1024
        peak = REWRITE_PEAK_RSS_RATIO * store_mib
        return (
            f"the embedded broker's store file is {store_mib:,.0f} MiB; noida-db rewrites all of "
            f"it after every write (about {cpu_s:.0f} CPU seconds and {peak:,.0f} MiB of memory "
            "each time, deploy/RUNBOOK.md section 11). Start long replays on a fresh --data-dir, "
            "or use Apache Kafka"
        )


class EmbeddedBroker(Protocol):
    """What the rest of mmbee needs from an embedded broker."""

    @property
    def bootstrap(self) -> str:
        """'127.0.0.1:PORT' for clients."""
        ...

    def start(self) -> None:
        """Start the broker and return once it answers Kafka requests."""
        ...

    def stop(self) -> None:
        """Stop the broker; data stays in its data directory."""
        ...


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_until_answers(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until a Kafka client can fetch cluster metadata from `bootstrap`."""
    from kafka import KafkaAdminClient  # lazy: kafka-python is only needed here at start
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError, ValueError) as exc:
            last = exc
            time.sleep(0.1)
    raise BrokerError(f"broker at {bootstrap} did not answer within {timeout_s:.0f} s: {last}")


class NoidaBroker:
    """noida-db started as `noida-db start --only kafka` on 127.0.0.1.

    The binary inside the `noida_db` package is started directly: the package's console script
    wraps it in a subprocess and orphans the server on SIGTERM. Its stdout/stderr go to
    `data_dir/broker.log` (it prints a harmless glibc "weak version" warning at start).

    Args:
        data_dir: where the broker keeps its log segments; reused across restarts.
        port: Kafka port on 127.0.0.1.
        startup_timeout_s: how long to wait for the first answer.
    """

    def __init__(self, data_dir: Path, port: int, startup_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @staticmethod
    def binary() -> Path:
        """Path of the noida-db server binary shipped in the `noida_db` wheel."""
        try:
            path = Path(str(resources.files("noida_db").joinpath("noida-db")))
        except ModuleNotFoundError:
            raise BrokerError(
                "the embedded broker needs the PyPI package 'noida-db' (pip install noida-db==0.2.3)"
            ) from None
        if not path.is_file():
            raise BrokerError(f"noida-db binary missing at {path}; reinstall 'noida-db==0.2.3'")
        if not os.access(path, os.X_OK):
            path.chmod(0o755)
        return path

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex((LOOPBACK, self.port)) == 0:
                raise BrokerError(f"port {self.port} on {LOOPBACK} is already in use")
        self._log = open(self.data_dir / "broker.log", "ab")  # noqa: SIM115 (closed in stop)
        cmd = [
            str(self.binary()),
            "start",
            "--data-dir", str(self.data_dir),
            "--only", "kafka",
            "--kafka-port", str(self.port),
            "--host", LOOPBACK,
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_until_answers(self.bootstrap, self.startup_timeout_s)
        except BrokerError:
            code = self._proc.poll()
            self.stop()
            tail = (self.data_dir / "broker.log").read_text(errors="replace")[-2000:]
            raise BrokerError(
                f"noida-db did not come up on {self.bootstrap} (exit code {code}); log tail:\n{tail}"
            ) from None

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def usage(self) -> BrokerUsage:
        """CPU seconds and RSS of the broker process, and the size of its store file."""
        proc = self._proc
        alive = proc is not None and proc.poll() is None
        cpu_s, rss_mib = process_usage(proc.pid) if proc is not None and alive else (None, None)
        store = sum(f.stat().st_size for f in self._store_files())
        return BrokerUsage(cpu_s=cpu_s, rss_mib=rss_mib, store_mib=store / 2**20)

    def _store_files(self) -> list[Path]:
        """noida-db's store: the `*.json` files of the data directory (its log is not one)."""
        return [f for f in self.data_dir.glob("*.json") if f.is_file()]

    def discard_store(self) -> float:
        """Delete the stopped broker's store (its `*.json` files: every record, topic and
        offset), keeping `broker.log`; returns the MiB freed. A run's data is then gone for good.

        Raises:
            BrokerError: while the broker is running.
        """
        if self.running:
            raise BrokerError("stop the broker before discarding its store")
        freed = 0
        for f in self._store_files():
            freed += f.stat().st_size
            f.unlink()
        return freed / 2**20

    def __enter__(self) -> NoidaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_embedded_broker(settings: Settings, ready: Callable[[str], None] | None = None) -> None:
    """Run the embedded broker in the foreground until SIGINT/SIGTERM (`mmbee broker`).

    Starts it on 127.0.0.1:`settings.broker_port` with data in `settings.broker_data_dir`,
    creates every catalogue topic with `settings.partitions` partitions, calls `ready` with the
    bootstrap address, then waits; stops the broker cleanly on the signal.
    """
    from mmbee.streams.topics import ensure_topics

    if settings.profile != "dev":
        raise BrokerError("the embedded broker is for profile 'dev'; production uses Apache Kafka")
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    broker = NoidaBroker(settings.broker_data_dir, settings.broker_port)
    try:
        broker.start()
        ensure_topics(settings.model_copy(update={"bootstrap_servers": broker.bootstrap}))
        if ready is not None:
            ready(broker.bootstrap)
        watch, ticks = StoreWatch(settings.broker_store_warn_mib), 0
        while not stop.wait(0.5):
            if not broker.running:
                raise BrokerError(f"noida-db exited; see {settings.broker_data_dir}/broker.log")
            ticks += 1
            if ticks % 20 == 0:  # every 10 s
                warning = watch.check(broker.usage().store_mib)
                if warning is not None:
                    log.warning("%s", warning)
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
