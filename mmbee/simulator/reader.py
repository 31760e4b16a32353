"""Read a KuaiLive-schema log directory (simulated or a user's own KuaiLive download).

`read_log(logdir)` checks every file's columns and types and returns a `LogBundle`; rows that
fail (wrong field count, non-numbers, timestamps outside 2000..2100, non-positive prices, ...)
are collected in `bundle.bad_rows` with file and line number, and the good rows are still read.
`iter_events(logdir)` yields `(catalogue_topic, Event)` in event-time order with deterministic
tie-breaking; `iter_encoded` yields the same events as (topic, key, JSON value) bytes for replay.
The multimodal side files (comment text, speech, frames) are optional: a directory holding only
KuaiLive's files yields watch and gift events (comments need text, so they are skipped and
`bundle.notes` says so).

Ids: KuaiLive's integer ids become strings `u{user_id}`, `a{streamer_id}` (author),
`l{live_id}`. Event ids are `{log_id}.{kind}.{row}` with row the 0-based data row of the source
file (kind: click, leave, gift, comment, frame, asr, audio), so they are stable and unique.

Example:
    >>> bundle = read_log(Path("logs/tiny"))  # doctest: +SKIP
    >>> next(iter_events(bundle))  # doctest: +SKIP
    ('live.frames', FrameEvent(event_id='sim1a2b3c4d.frame.0', ...))
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmbee.schemas.events import (
    AsrSegment,
    AudioChunk,
    CommentEvent,
    Event,
    FrameEvent,
    GiftEvent,
    WatchEvent,
)
from mmbee.schemas.types import TS_MAX_MS, TS_MIN_MS, encode_embedding
from mmbee.simulator.content import (
    LATENT_DIM,
    dequantize_latents,
    expand_frame_latents,
    frame_projection,
)
from mmbee.simulator.logs import MANIFEST

__all__ = [
    "BadRow",
    "Table",
    "LogBundle",
    "LogError",
    "read_log",
    "iter_events",
    "iter_encoded",
    "count_events",
    "read_truth",
    "read_communities",
    "read_hidden_state",
    "event_id",
    "user_key",
    "author_key",
    "live_key",
    "TOPIC_RANK",
]

Kind = Literal["id", "int", "ts", "nonneg", "price", "str", "hex", "prob"]

_SPECS: dict[str, list[tuple[str, Kind]]] = {
    "user.csv": [("user_id", "id")],
    "streamer.csv": [("streamer_id", "id")],
    "room.csv": [
        ("p_date", "int"),
        ("live_id", "id"),
        ("streamer_id", "id"),
        ("live_type", "int"),
        ("start_timestamp", "ts"),
        ("end_timestamp", "ts"),
        ("live_content_category", "str"),
        ("live_name_id", "int"),
    ],
    "click.csv": [
        ("user_id", "id"),
        ("live_id", "id"),
        ("streamer_id", "id"),
        ("timestamp", "ts"),
        ("watch_live_time", "nonneg"),
    ],
    "gift.csv": [
        ("user_id", "id"),
        ("live_id", "id"),
        ("streamer_id", "id"),
        ("timestamp", "ts"),
        ("gift_price", "price"),
    ],
    "comment.csv": [
        ("user_id", "id"),
        ("live_id", "id"),
        ("streamer_id", "id"),
        ("timestamp", "ts"),
    ],
    "like.csv": [
        ("user_id", "id"),
        ("live_id", "id"),
        ("streamer_id", "id"),
        ("timestamp", "ts"),
    ],
    "mmbee_texts.csv": [("text_id", "id"), ("text", "str")],
    "mmbee_comment_text.csv": [("comment_row", "id"), ("text_id", "id")],
    "mmbee_speech.csv": [
        ("live_id", "id"),
        ("streamer_id", "id"),
        ("start_timestamp", "ts"),
        ("end_timestamp", "ts"),
        ("text_id", "id"),
    ],
    "mmbee_frames.csv": [
        ("live_id", "id"),
        ("streamer_id", "id"),
        ("timestamp", "ts"),
        ("latent", "hex"),
    ],
    "truth/impressions.csv": [("click_row", "id"), ("p_gift_1h", "prob"), ("moment", "str")],
    "truth/users.csv": [("user_id", "id"), ("community", "id")],
    "truth/streamers.csv": [("streamer_id", "id"), ("community", "id")],
}
_OPTIONAL_COLUMNS: dict[str, list[tuple[str, Kind]]] = {
    # the gift rate at unit propensity (> 0, checked like a price): `mmbee.simulator.oracle`
    "truth/impressions.csv": [("unit_rate", "price")],
    "truth/users.csv": [("idol_streamer_id", "id")],
    "mmbee_speech.csv": [("audio_offset", "nonneg"), ("audio_bytes", "nonneg")],
    "mmbee_frames.csv": [("jpeg_offset", "nonneg"), ("jpeg_bytes", "nonneg")],
}
_KUAILIVE = (
    "user.csv",
    "streamer.csv",
    "room.csv",
    "click.csv",
    "gift.csv",
    "comment.csv",
    "like.csv",
)
_SIDE = ("mmbee_texts.csv", "mmbee_comment_text.csv", "mmbee_speech.csv", "mmbee_frames.csv")
_MAX_WATCH_MS = 7 * 24 * 3600 * 1000
_MAX_PRICE = 1e7

TOPIC_RANK: dict[str, int] = {
    "live.frames": 0,
    "live.audio": 1,
    "live.asr": 2,
    "live.watch": 3,
    "live.comments": 4,
    "live.gifts": 5,
}
"""Tie-break between events with the same `ts_ms`: content first, then watch, comments, gifts;
within a kind, by source row (a click's enter before its leave)."""


class LogError(ValueError):
    """The directory is not a readable log (no known file, unreadable manifest)."""


@dataclass(frozen=True)
class BadRow:
    """One rejected row: file (relative to the log dir), 1-based line number, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class Table:
    """The good rows of one CSV file: typed numpy columns (`str`/`hex` columns are lists) and
    each row's 1-based line number in the file."""

    name: str
    columns: dict[str, Any]
    lines: np.ndarray

    def __len__(self) -> int:
        return int(self.lines.shape[0])

    def __getitem__(self, column: str) -> Any:
        return self.columns[column]

    @property
    def rows(self) -> np.ndarray:
        """Each good row's 0-based data row in the source file (line - 2): the `row` of its
        event id, stable whether or not other rows were rejected."""
        return self.lines - 2


@dataclass
class LogBundle:
    """Everything read from a log directory.

    Attributes:
        root: the directory.
        manifest: `mmbee_world.json` (None for a plain KuaiLive directory).
        log_id: prefix of every event id (`manifest["log_id"]`, or a digest of the files).
        tables: good rows per file, keyed by file name relative to `root` ("click.csv", ...).
        bad_rows: rejected rows with file, line and reason.
        notes: what could not be used and why (e.g. comments without text).
        texts: `mmbee_texts.csv` as a list indexed by text id (None when absent).
        text_embeddings: `mmbee_text_embeddings.npy`, rows indexed by text id (None when absent).
    """

    root: Path
    manifest: dict[str, Any] | None
    log_id: str
    tables: dict[str, Table]
    bad_rows: list[BadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    texts: list[str] | None = None
    text_embeddings: np.ndarray | None = None

    def has(self, name: str) -> bool:
        """True when file `name` was present and readable."""
        return name in self.tables

    def table(self, name: str) -> Table:
        """The table of file `name`; KeyError names the files present."""
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"{name} not in {self.root}; present: {sorted(self.tables)}") from None

    def frame_latents(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Frame latents (n, LATENT_DIM) float32 of `mmbee_frames.csv` rows (all by default)."""
        codes = self.table("mmbee_frames.csv").columns["latent_codes"]
        sel = codes if rows is None else codes[np.asarray(rows)]
        return dequantize_latents(sel)

    def frame_embeddings(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Frame embeddings (n, 1280) float32: the frame latents through the fixed projection."""
        return expand_frame_latents(self.frame_latents(rows))

    def comment_text_ids(self) -> np.ndarray:
        """Text id per good comment.csv row (-1 where the side file gives none)."""
        comments = self.tables.get("comment.csv")
        if comments is None:
            return np.zeros(0, np.int64)
        out = np.full(len(comments), -1, np.int64)
        side = self.tables.get("mmbee_comment_text.csv")
        if side is None or self.texts is None:
            return out
        # comment_row is the 0-based data row of comment.csv: line = row + 2
        pos = {int(line): i for i, line in enumerate(comments.lines.tolist())}
        n_texts = len(self.texts)
        for row, tid in zip(side["comment_row"].tolist(), side["text_id"].tolist(), strict=True):
            i = pos.get(row + 2)
            if i is not None and 0 <= tid < n_texts:
                out[i] = tid
        return out


# ---------------------------------------------------------------------------------------------
# CSV parsing


def _parse_field(kind: Kind, raw: str) -> Any:
    """Convert one field; raises ValueError with a reason."""
    if kind in ("str",):
        return raw
    if kind == "hex":
        b = bytes.fromhex(raw)
        if len(b) != LATENT_DIM:
            raise ValueError(f"latent must be {2 * LATENT_DIM} hex digits")
        return b
    v = float(raw)
    if not math.isfinite(v):
        raise ValueError(f"{raw!r} is not finite")
    if kind == "price":
        if not 0 < v <= _MAX_PRICE:
            raise ValueError(f"gift_price {raw} not in (0, {_MAX_PRICE:g}]")
        return v
    if kind == "prob":
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"probability {raw} not in [0, 1]")
        return v
    if not v.is_integer():
        raise ValueError(f"{raw!r} is not an integer")
    iv = int(v) if "." in raw or "e" in raw.lower() else int(raw)
    _check_int(kind, iv)
    return iv


def _check_int(kind: Kind, v: int) -> None:
    if kind == "id" and v < 0:
        raise ValueError(f"id {v} is negative")
    if kind == "ts" and not TS_MIN_MS <= v < TS_MAX_MS:
        raise ValueError(f"timestamp {v} is outside 2000..2100 in epoch milliseconds")
    if kind == "nonneg" and not 0 <= v <= _MAX_WATCH_MS:
        raise ValueError(f"value {v} not in [0, {_MAX_WATCH_MS}]")


_NUMERIC = {"id", "int", "ts", "nonneg", "price", "prob"}


def _vector_checks(kind: Kind, col: np.ndarray) -> tuple[np.ndarray, str]:
    """Mask of bad values in a float64 column and the reason template."""
    finite = np.isfinite(col)
    if kind == "price":
        return ~(finite & (col > 0) & (col <= _MAX_PRICE)), "gift_price not in (0, 1e7]"
    if kind == "prob":
        return ~(finite & (col >= 0) & (col <= 1)), "probability not in [0, 1]"
    integral = finite & (np.floor(col) == col)
    if kind == "id":
        return ~(integral & (col >= 0)), "id is not a non-negative integer"
    if kind == "ts":
        ok = integral & (col >= TS_MIN_MS) & (col < TS_MAX_MS)
        return ~ok, "timestamp is not an integer in 2000..2100 epoch milliseconds"
    if kind == "nonneg":
        return ~(
            integral & (col >= 0) & (col <= _MAX_WATCH_MS)
        ), "value not an integer in [0, 7 days ms]"
    return ~integral, "not an integer"


def _read_csv(root: Path, name: str) -> tuple[Table | None, list[BadRow]]:
    """Read one CSV per its spec: a Table of good rows and the bad rows."""
    path = root / name
    spec = list(_SPECS[name])
    bad: list[BadRow] = []
    with open(path, encoding="utf-8", newline="") as f:
        header_line = f.readline()
    header = next(csv.reader([header_line])) if header_line.strip() else []
    header = [h.strip() for h in header]
    missing = [c for c, _ in spec if c not in header]
    if missing:
        return None, [BadRow(name, 1, f"missing columns {missing}; header is {header}")]
    spec += [(c, k) for c, k in _OPTIONAL_COLUMNS.get(name, []) if c in header]
    idx = [header.index(c) for c, _ in spec]
    table = None
    if all(k in _NUMERIC or k == "hex" for _, k in spec):
        table = _read_numeric_fast(path, name, spec, idx, len(header), bad)
    if table is None:
        bad.clear()
        table = _read_slow(path, name, spec, idx, len(header), bad)
    if name == "mmbee_frames.csv":
        lat = table.columns.pop("latent")
        if not isinstance(lat, np.ndarray):
            lat = np.frombuffer(b"".join(lat), dtype=np.int8).reshape(-1, LATENT_DIM)
        table.columns["latent_codes"] = lat
    return table, bad


def _read_numeric_fast(
    path: Path,
    name: str,
    spec: list[tuple[str, Kind]],
    idx: list[int],
    n_fields: int,
    bad: list[BadRow],
) -> Table | None:
    """numpy's C parser for all-numeric files; None when the file needs the careful path."""
    raw = path.read_bytes()
    n_lines = raw.count(b"\n") + (0 if raw.endswith(b"\n") or not raw else 1)
    n_rows = n_lines - 1
    if n_rows <= 0:
        return Table(name, {c: np.zeros(0, _dtype(k)) for c, k in spec}, np.zeros(0, np.int64))
    if b'"' in raw or b"\n\n" in raw or b"\r" in raw:
        return None
    num = [(j, c, k) for j, (c, k) in enumerate(spec) if k != "hex"]
    hexes = [(j, c) for j, (c, k) in enumerate(spec) if k == "hex"]
    try:
        arr = np.loadtxt(
            path,
            delimiter=",",
            skiprows=1,
            usecols=[idx[j] for j, _, _ in num],
            dtype=np.float64,
            ndmin=2,
            comments=None,
            encoding="utf-8",
        )
    except ValueError:
        return None
    if arr.shape[0] != n_rows:
        return None
    body = raw.split(b"\n")[1 : n_rows + 1]
    # every row must have the header's field count (loadtxt tolerates extra fields)
    if sum(line.count(b",") for line in body) != n_rows * (n_fields - 1):
        return None
    cols: dict[str, Any] = {}
    for j, c in hexes:
        field_bytes = [line.split(b",")[idx[j]] for line in body]
        blob = b"".join(field_bytes)
        if len(blob) != n_rows * 2 * LATENT_DIM or not _is_hex(blob):
            return None
        cols[c] = np.frombuffer(bytes.fromhex(blob.decode("ascii")), np.int8).reshape(
            n_rows, LATENT_DIM
        )
    lines = np.arange(2, n_rows + 2, dtype=np.int64)
    keep = np.ones(n_rows, bool)
    for a, (_, col, kind) in enumerate(num):
        bad_mask, reason = _vector_checks(kind, arr[:, a])
        for r in np.flatnonzero(bad_mask & keep).tolist():
            bad.append(BadRow(name, int(lines[r]), f"{col}: {reason} (got {arr[r, a]!r})"))
        keep &= ~bad_mask
    for a, (_, col, kind) in enumerate(num):
        cols[col] = arr[keep, a].astype(_dtype(kind))
    for _, c in hexes:
        cols[c] = cols[c][keep]
    return Table(name, {c: cols[c] for c, _ in spec}, lines[keep])


_HEX = np.zeros(256, bool)
_HEX[np.frombuffer(b"0123456789abcdefABCDEF", np.uint8)] = True


def _is_hex(blob: bytes) -> bool:
    return bool(_HEX[np.frombuffer(blob, np.uint8)].all())


def _dtype(kind: Kind) -> Any:
    return np.float64 if kind in ("price", "prob") else np.int64


def _read_slow(
    path: Path,
    name: str,
    spec: list[tuple[str, Kind]],
    idx: list[int],
    n_fields: int,
    bad: list[BadRow],
) -> Table:
    """Row by row with the csv module: every failure becomes a BadRow with its line."""
    values: list[list[Any]] = [[] for _ in spec]
    lines: list[int] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != n_fields:
                bad.append(BadRow(name, line, f"has {len(row)} fields, header has {n_fields}"))
                continue
            try:
                parsed = []
                for (col, kind), i in zip(spec, idx, strict=True):
                    try:
                        parsed.append(
                            _parse_field(kind, row[i].strip() if kind != "str" else row[i])
                        )
                    except ValueError as exc:
                        raise ValueError(f"{col}: {exc}") from None
            except ValueError as exc:
                bad.append(BadRow(name, line, str(exc)))
                continue
            for store, v in zip(values, parsed, strict=True):
                store.append(v)
            lines.append(line)
    cols: dict[str, Any] = {}
    for (col, kind), store in zip(spec, values, strict=True):
        cols[col] = store if kind in ("str", "hex") else np.asarray(store, dtype=_dtype(kind))
    return Table(name, cols, np.asarray(lines, np.int64))


# ---------------------------------------------------------------------------------------------
# The bundle


def _digest_log_id(root: Path) -> str:
    h = hashlib.sha256()
    for name in _KUAILIVE:
        p = root / name
        if p.exists():
            h.update(f"{name}:{p.stat().st_size}:".encode())
            with open(p, "rb") as f:
                h.update(f.read(1 << 20))
    return "kl" + h.hexdigest()[:8]


def read_log(logdir: Path | str, *, truth: bool = False, skip: tuple[str, ...] = ()) -> LogBundle:
    """Read a log directory; see the module docstring.

    Args:
        truth: also read truth/ (impressions, users, streamers; never for models).
        skip: file names not to read (replay skips like.csv: likes have no topic).
    """
    root = Path(logdir)
    if not root.is_dir():
        raise LogError(f"{root} is not a directory")
    manifest = None
    if (root / MANIFEST).exists():
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except json.JSONDecodeError as exc:
            raise LogError(f"{root / MANIFEST} is not valid JSON: {exc}") from None
    names = [n for n in (*_KUAILIVE, *_SIDE) if (root / n).exists() and n not in skip]
    if truth:
        names += [n for n in _SPECS if n.startswith("truth/") and (root / n).exists()]
    if not any(n in _KUAILIVE for n in names):
        raise LogError(f"{root} holds none of KuaiLive's files {list(_KUAILIVE)}")
    tables: dict[str, Table] = {}
    bad: list[BadRow] = []
    for name in names:
        table, rows = _read_csv(root, name)
        bad.extend(rows)
        if table is not None:
            tables[name] = table
    log_id = str(manifest["log_id"]) if manifest and "log_id" in manifest else _digest_log_id(root)
    bundle = LogBundle(root=root, manifest=manifest, log_id=log_id, tables=tables, bad_rows=bad)
    if "mmbee_texts.csv" in tables:
        t = tables["mmbee_texts.csv"]
        n = int(t["text_id"].max(initial=-1)) + 1
        texts = [""] * n
        for i, s in zip(t["text_id"].tolist(), t["text"], strict=True):
            texts[i] = s
        bundle.texts = texts
    emb_path = root / "mmbee_text_embeddings.npy"
    if emb_path.exists():
        bundle.text_embeddings = np.load(emb_path, allow_pickle=False)
    if "comment.csv" in tables and bundle.texts is None:
        bundle.notes.append(
            "comment.csv has no text (no mmbee_texts.csv / mmbee_comment_text.csv): comments "
            "are not replayed, since a CommentEvent needs text"
        )
    for name in ("mmbee_frames.csv", "mmbee_speech.csv"):
        if name not in tables:
            bundle.notes.append(
                f"no {name}: no {'frames' if 'frames' in name else 'speech'} events"
            )
    return bundle


def _bundle(log: LogBundle | Path | str) -> LogBundle:
    return log if isinstance(log, LogBundle) else read_log(log)


def event_id(log_id: str, kind: str, row: int) -> str:
    """The event id of row `row` (0-based data row) of source `kind` (click, leave, gift, ...)."""
    return f"{log_id}.{kind}.{row}"


def user_key(user_id: int) -> str:
    """String id of a KuaiLive user id."""
    return f"u{user_id}"


def author_key(streamer_id: int) -> str:
    """String id of a KuaiLive streamer id."""
    return f"a{streamer_id}"


def live_key(live_id: int) -> str:
    """String id of a KuaiLive live id."""
    return f"l{live_id}"


def read_truth(logdir: LogBundle | Path | str) -> dict[str, float]:
    """Watch (enter) event id -> exact P(gift by that user to that streamer within 1 h)."""
    root = logdir.root if isinstance(logdir, LogBundle) else Path(logdir)
    table, bad = _read_csv(root, "truth/impressions.csv")
    if table is None or bad:
        raise LogError(f"truth/impressions.csv unreadable: {[str(b) for b in bad[:5]]}")
    manifest = json.loads((root / MANIFEST).read_text())
    log_id = manifest["log_id"]
    return {
        event_id(log_id, "click", r): p
        for r, p in zip(table["click_row"].tolist(), table["p_gift_1h"].tolist(), strict=True)
    }


def read_hidden_state(logdir: LogBundle | Path | str) -> tuple[dict[str, str], dict[str, str]]:
    """(watch enter event id -> the stream's moment at the impression, user id -> idol author id)
    from the truth side files; for diagnostics only (models never read the truth)."""
    root = logdir.root if isinstance(logdir, LogBundle) else Path(logdir)
    imp, bad = _read_csv(root, "truth/impressions.csv")
    users, bad_users = _read_csv(root, "truth/users.csv")
    if imp is None or users is None or bad or bad_users or "idol_streamer_id" not in users.columns:
        raise LogError("truth/impressions.csv or truth/users.csv unreadable or without idols")
    log_id = json.loads((root / MANIFEST).read_text())["log_id"]
    moments = {
        event_id(log_id, "click", r): m
        for r, m in zip(imp["click_row"].tolist(), list(imp["moment"]), strict=True)
    }
    idols = {
        user_key(u): author_key(a)
        for u, a in zip(users["user_id"].tolist(), users["idol_streamer_id"].tolist(), strict=True)
    }
    return moments, idols


def read_communities(logdir: LogBundle | Path | str) -> dict[str, int]:
    """String id (`u..` / `a..`) -> community id, for users and streamers (truth/ side files)."""
    root = logdir.root if isinstance(logdir, LogBundle) else Path(logdir)
    out: dict[str, int] = {}
    for name, key, fmt in (
        ("truth/users.csv", "user_id", user_key),
        ("truth/streamers.csv", "streamer_id", author_key),
    ):
        table, bad = _read_csv(root, name)
        if table is None or bad:
            raise LogError(f"{name} unreadable: {[str(b) for b in bad[:5]]}")
        for i, c in zip(table[key].tolist(), table["community"].tolist(), strict=True):
            out[fmt(i)] = c
    return out


# ---------------------------------------------------------------------------------------------
# Events in event-time order


@dataclass
class _Plan:
    """The merged event order: per event its topic kind, source row and timestamp."""

    ts: np.ndarray
    kind: np.ndarray  # index into _KINDS
    row: np.ndarray  # index into the kind's table (good rows)


_KINDS = ("frame", "audio", "asr", "enter", "leave", "comment", "gift")
_KIND_TOPIC = {
    "frame": "live.frames",
    "audio": "live.audio",
    "asr": "live.asr",
    "enter": "live.watch",
    "leave": "live.watch",
    "comment": "live.comments",
    "gift": "live.gifts",
}


def _plan(
    b: LogBundle, start_ms: int | None, frames: str, speech: str, end_ms: int | None = None
) -> tuple[_Plan, dict[str, Any]]:
    parts_ts: list[np.ndarray] = []
    parts_kind: list[np.ndarray] = []
    parts_row: list[np.ndarray] = []
    parts_rank: list[np.ndarray] = []
    parts_sub: list[np.ndarray] = []
    ctx: dict[str, Any] = {}

    def add(kind: str, ts: np.ndarray, rows: np.ndarray, sub: np.ndarray | None = None) -> None:
        parts_ts.append(ts.astype(np.int64))
        parts_kind.append(np.full(ts.size, _KINDS.index(kind), np.int64))
        parts_row.append(rows.astype(np.int64))
        parts_rank.append(np.full(ts.size, TOPIC_RANK[_KIND_TOPIC[kind]], np.int64))
        parts_sub.append(np.zeros(ts.size, np.int64) if sub is None else sub)

    if "mmbee_frames.csv" in b.tables:
        t = b.tables["mmbee_frames.csv"]
        has_jpeg = "jpeg_offset" in t.columns and (b.root / "media" / "frames.jpg.bin").exists()
        mode = frames if frames != "auto" else ("jpeg" if has_jpeg else "embedding")
        if mode == "jpeg" and not has_jpeg:
            raise LogError("frames='jpeg' but the log has no media/frames.jpg.bin")
        ctx["frames"] = mode
        add("frame", t["timestamp"], np.arange(len(t)), t.lines)
    if "mmbee_speech.csv" in b.tables and b.texts is not None:
        t = b.tables["mmbee_speech.csv"]
        has_audio = "audio_offset" in t.columns and (b.root / "media" / "speech.pcm.bin").exists()
        mode = speech if speech != "auto" else ("audio" if has_audio else "text")
        if mode == "audio" and not has_audio:
            raise LogError("speech='audio' but the log has no media/speech.pcm.bin")
        ctx["speech"] = mode
        add("audio" if mode == "audio" else "asr", t["start_timestamp"], np.arange(len(t)), t.lines)
    if "click.csv" in b.tables:
        t = b.tables["click.csv"]
        rows = np.arange(len(t))
        # a click's enter and leave share the source line, enter first (sub-key 2*line, 2*line+1)
        add("enter", t["timestamp"], rows, 2 * t.lines)
        add("leave", t["timestamp"] + t["watch_live_time"], rows, 2 * t.lines + 1)
    if "comment.csv" in b.tables and b.texts is not None:
        t = b.tables["comment.csv"]
        tids = b.comment_text_ids()
        has = np.flatnonzero(tids >= 0)
        note = f"{len(t) - has.size} comment rows have no text and are skipped"
        if has.size < len(t) and note not in b.notes:
            b.notes.append(note)
        ctx["comment_text"] = tids
        add("comment", t["timestamp"][has], has, t.lines[has])
    if "gift.csv" in b.tables:
        t = b.tables["gift.csv"]
        add("gift", t["timestamp"], np.arange(len(t)), t.lines)
    if not parts_ts:
        return _Plan(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)), ctx
    ts = np.concatenate(parts_ts)
    kind = np.concatenate(parts_kind)
    row = np.concatenate(parts_row)
    rank = np.concatenate(parts_rank)
    sub = np.concatenate(parts_sub)
    order = np.lexsort((sub, rank, ts))
    ts, kind, row = ts[order], kind[order], row[order]
    first = 0 if start_ms is None else int(np.searchsorted(ts, start_ms, side="left"))
    last = ts.size if end_ms is None else int(np.searchsorted(ts, end_ms, side="left"))
    ts, kind, row = ts[first:last], kind[first:last], row[first:last]
    return _Plan(ts, kind, row), ctx


class _Encoder:
    """Turns planned events into (topic, key, value) bytes equal to `model.model_dump_json()`."""

    def __init__(self, b: LogBundle, ctx: dict[str, Any], attach_text_embeddings: bool) -> None:
        self.b = b
        self.ctx = ctx
        self.log_id = b.log_id
        self.text_json: list[str] = [json.dumps(t, ensure_ascii=False) for t in (b.texts or [])]
        self.text_emb: list[str] | None = None
        if attach_text_embeddings:
            if b.text_embeddings is None:
                raise LogError(
                    "attach_text_embeddings needs mmbee_text_embeddings.npy "
                    "(mmbee simulate --text-embeddings)"
                )
            self.text_emb = ['"' + encode_embedding(v) + '"' for v in b.text_embeddings]
        self._projection: np.ndarray | None = None
        self._frame_cache: dict[int, str] = {}
        self._media: dict[str, bytes] = {}
        self._lists: dict[str, dict[str, list[Any]]] = {}
        ct = ctx.get("comment_text")
        self._comment_tids: list[int] = [] if ct is None else ct.tolist()

    def _cols(self, name: str) -> dict[str, list[Any]]:
        """A table's columns as Python lists (indexing a list is ~10x cheaper than numpy)."""
        cols = self._lists.get(name)
        if cols is None:
            table = self.b.tables[name]
            cols = self._lists[name] = {
                c: (v.tolist() if isinstance(v, np.ndarray) and v.ndim == 1 else v)
                for c, v in table.columns.items()
            }
            cols["_row"] = table.rows.tolist()
        return cols

    # -- helpers -----------------------------------------------------------------------------
    def _blob(self, name: str) -> bytes:
        if name not in self._media:
            self._media[name] = (self.b.root / "media" / name).read_bytes()
        return self._media[name]

    def prepare_frames(self, rows: np.ndarray) -> None:
        """Precompute the embedding strings of a batch of frame rows (one matmul)."""
        if self.ctx.get("frames") != "embedding" or rows.size == 0:
            return
        if self._projection is None:
            self._projection = frame_projection()
        emb = expand_frame_latents(self.b.frame_latents(rows), self._projection)
        emb = emb.astype("<f4", copy=False)
        for r, v in zip(rows.tolist(), emb, strict=True):
            self._frame_cache[r] = base64.b64encode(v.tobytes()).decode("ascii")

    def encoders(self) -> list[Any]:
        """Per kind (index into _KINDS) the function row -> (topic, key, value)."""
        return [getattr(self, "_" + k) for k in _KINDS]

    # -- per kind ------------------------------------------------------------------------------
    def _frame(self, r: int) -> tuple[str, bytes, bytes]:
        t = self._cols("mmbee_frames.csv")
        eid = event_id(self.log_id, "frame", t["_row"][r])
        author = author_key(t["streamer_id"][r])
        head = (
            f'{{"event_id":"{eid}","ts_ms":{t["timestamp"][r]},'
            f'"live_id":"{live_key(t["live_id"][r])}","author_id":"{author}",'
        )
        if self.ctx["frames"] == "jpeg":
            off, n = t["jpeg_offset"][r], t["jpeg_bytes"][r]
            jpeg = base64.urlsafe_b64encode(self._blob("frames.jpg.bin")[off : off + n]).decode()
            value = head + f'"image_jpeg":"{jpeg}","embedding":null}}'
        else:
            emb = self._frame_cache.pop(r, None)
            if emb is None:
                self.prepare_frames(np.array([r]))
                emb = self._frame_cache.pop(r)
            value = head + f'"image_jpeg":null,"embedding":"{emb}"}}'
        return "live.frames", author.encode(), value.encode()

    def _asr(self, r: int) -> tuple[str, bytes, bytes]:
        t = self._cols("mmbee_speech.csv")
        tid = t["text_id"][r]
        author = author_key(t["streamer_id"][r])
        emb = self.text_emb[tid] if self.text_emb is not None else "null"
        value = (
            f'{{"event_id":"{event_id(self.log_id, "asr", t["_row"][r])}",'
            f'"ts_ms":{t["start_timestamp"][r]},'
            f'"live_id":"{live_key(t["live_id"][r])}","author_id":"{author}",'
            f'"end_ms":{t["end_timestamp"][r]},"text":{self.text_json[tid]},'
            f'"language":"en","text_embedding":{emb},"audio_event_id":null}}'
        )
        return "live.asr", author.encode(), value.encode()

    def _audio(self, r: int) -> tuple[str, bytes, bytes]:
        t = self._cols("mmbee_speech.csv")
        author = author_key(t["streamer_id"][r])
        off, n = t["audio_offset"][r], t["audio_bytes"][r]
        pcm = base64.urlsafe_b64encode(self._blob("speech.pcm.bin")[off : off + n]).decode()
        value = (
            f'{{"event_id":"{event_id(self.log_id, "audio", t["_row"][r])}",'
            f'"ts_ms":{t["start_timestamp"][r]},'
            f'"live_id":"{live_key(t["live_id"][r])}","author_id":"{author}",'
            f'"sample_rate_hz":16000,"pcm_s16le":"{pcm}"}}'
        )
        return "live.audio", author.encode(), value.encode()

    def _watch(self, r: int, leave: bool) -> tuple[str, bytes, bytes]:
        t = self._cols("click.csv")
        user = user_key(t["user_id"][r])
        ts = t["timestamp"][r]
        watch = t["watch_live_time"][r]
        if leave:
            eid, ts, tail = (
                event_id(self.log_id, "leave", t["_row"][r]),
                ts + watch,
                f'"leave","watch_ms":{watch}}}',
            )
        else:
            eid, tail = event_id(self.log_id, "click", t["_row"][r]), '"enter","watch_ms":null}'
        value = (
            f'{{"event_id":"{eid}","ts_ms":{ts},"user_id":"{user}",'
            f'"author_id":"{author_key(t["streamer_id"][r])}",'
            f'"live_id":"{live_key(t["live_id"][r])}","action":{tail}'
        )
        return "live.watch", user.encode(), value.encode()

    def _enter(self, r: int) -> tuple[str, bytes, bytes]:
        return self._watch(r, False)

    def _leave(self, r: int) -> tuple[str, bytes, bytes]:
        return self._watch(r, True)

    def _comment(self, r: int) -> tuple[str, bytes, bytes]:
        t = self._cols("comment.csv")
        tid = self._comment_tids[r]
        author = author_key(t["streamer_id"][r])
        emb = self.text_emb[tid] if self.text_emb is not None else "null"
        value = (
            f'{{"event_id":"{event_id(self.log_id, "comment", t["_row"][r])}",'
            f'"ts_ms":{t["timestamp"][r]},"user_id":"{user_key(t["user_id"][r])}",'
            f'"author_id":"{author}","live_id":"{live_key(t["live_id"][r])}",'
            f'"text":{self.text_json[tid]},"text_embedding":{emb}}}'
        )
        return "live.comments", author.encode(), value.encode()

    def _gift(self, r: int) -> tuple[str, bytes, bytes]:
        t = self._cols("gift.csv")
        author = author_key(t["streamer_id"][r])
        value = (
            f'{{"event_id":"{event_id(self.log_id, "gift", t["_row"][r])}",'
            f'"ts_ms":{t["timestamp"][r]},"user_id":"{user_key(t["user_id"][r])}",'
            f'"author_id":"{author}","live_id":"{live_key(t["live_id"][r])}",'
            f'"gift_value":{float(t["gift_price"][r])!r}}}'
        )
        return "live.gifts", author.encode(), value.encode()


_MODELS: dict[str, type[Event]] = {
    "live.frames": FrameEvent,
    "live.audio": AudioChunk,
    "live.asr": AsrSegment,
    "live.watch": WatchEvent,
    "live.comments": CommentEvent,
    "live.gifts": GiftEvent,
}


def iter_encoded(
    log: LogBundle | Path | str,
    start_ms: int | None = None,
    *,
    frames: Literal["auto", "embedding", "jpeg"] = "auto",
    speech: Literal["auto", "text", "audio"] = "auto",
    attach_text_embeddings: bool = False,
    chunk: int = 4096,
    end_ms: int | None = None,
) -> Iterator[tuple[str, bytes, bytes, int]]:
    """Events as (catalogue topic, key, JSON value, ts_ms) in event-time order.

    Args:
        start_ms: skip events before this event time (resume a replay).
        end_ms: stop before this event time (a leave is an event at enter + watch time).
        frames: `embedding` (FrameEvent.embedding from the latent), `jpeg` (media mode),
            `auto` = jpeg when the log has media frames.
        speech: `text` (AsrSegment with the script), `audio` (AudioChunk, media mode), `auto`.
        attach_text_embeddings: fill `text_embedding` of comments and ASR segments from
            `mmbee_text_embeddings.npy`.
    """
    b = _bundle(log)
    plan, ctx = _plan(b, start_ms, frames, speech, end_ms)
    enc = _Encoder(b, ctx, attach_text_embeddings)
    frame_kind = _KINDS.index("frame")
    fns = enc.encoders()
    for lo in range(0, plan.ts.size, chunk):
        kinds = plan.kind[lo : lo + chunk]
        rows = plan.row[lo : lo + chunk]
        enc.prepare_frames(rows[kinds == frame_kind])
        for k, r, ts in zip(
            kinds.tolist(), rows.tolist(), plan.ts[lo : lo + chunk].tolist(), strict=True
        ):
            topic, key, value = fns[k](r)
            yield topic, key, value, ts


def count_events(
    log: LogBundle | Path | str,
    start_ms: int | None = None,
    *,
    frames: Literal["auto", "embedding", "jpeg"] = "auto",
    speech: Literal["auto", "text", "audio"] = "auto",
    end_ms: int | None = None,
) -> int:
    """How many events `iter_encoded` / `iter_events` would yield."""
    b = _bundle(log)
    plan, _ = _plan(b, start_ms, frames, speech, end_ms)
    return int(plan.ts.size)


def iter_events(
    log: LogBundle | Path | str,
    start_ms: int | None = None,
    *,
    frames: Literal["auto", "embedding", "jpeg"] = "auto",
    speech: Literal["auto", "text", "audio"] = "auto",
    attach_text_embeddings: bool = False,
    end_ms: int | None = None,
) -> Iterator[tuple[str, Event]]:
    """Events as (catalogue topic, validated pydantic Event) in event-time order.

    The models are parsed from exactly the bytes replay publishes, so offline training sees
    what the stream sees. Every WatchEvent with action "enter" is an impression; its event id
    keys `read_truth`.
    """
    for topic, _key, value, _ts in iter_encoded(
        log,
        start_ms,
        frames=frames,
        speech=speech,
        attach_text_embeddings=attach_text_embeddings,
        end_ms=end_ms,
    ):
        yield topic, _MODELS[topic].model_validate_json(value)
