"""Snapshots to tensors: a columnar example table and the collate used by training and serving.

`ExampleTable` stores labeled snapshots compactly (ids interned into vocabularies, behaviour
ages bucketed, segments as rows of the segment store) and cuts `GTRBatch`es out of them; the
hashed table rows are computed per model from the vocabularies, so one table serves every
variant of an ablation. `collate` turns plain snapshots into a batch through the same table
code, which is what serving calls: training and serving tensorise identically.

Content: a batch carries each distinct (streamer, segment rows) buffer once (U <= B) and a
(B,) index into them, so the content encoder runs once per buffer, not per impression.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmbee.encoders.base import SegmentBatch
from mmbee.scorer.batch import DENSE_FEATURES, EXPANSIONS, GTRBatch, age_buckets, id_row
from mmbee.scorer.examples import LabeledExample
from mmbee.scorer.features import (
    FeatureConfig,
    FeatureSnapshot,
    MemorySegmentStore,
    dense_matrix,
    dense_vector,
)

__all__ = [
    "Vocab",
    "Rows",
    "ExampleTable",
    "collate",
    "RowCache",
    "collate_request",
    "category_onehot",
]


class Vocab:
    """Interned ids: id -> dense index, and the hashed table row of every index (cached per size).

    Example:
        >>> v = Vocab()
        >>> v.index("u1"), v.index("u2"), v.index("u1")
        (0, 1, 0)
        >>> v.rows(16)[-1]  # the extra last entry is padding (index -1)
        0
    """

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self.ids: list[str] = []
        self._luts: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, key: str) -> int:
        """Dense index of `key`, added on first sight."""
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.ids)
            self.ids.append(key)
        return i

    def rows(self, n_rows: int) -> np.ndarray:
        """(len + 1,) int64 table rows of every index; the last entry (index -1) is row 0."""
        lut = self._luts.get(n_rows)
        if lut is None or lut.shape[0] != len(self.ids) + 1:
            start = 0 if lut is None else lut.shape[0] - 1
            new = [id_row(k, n_rows) for k in self.ids[start:]]
            old = np.zeros(0, np.int64) if lut is None else lut[:-1]
            lut = np.concatenate([old, np.asarray(new, np.int64), [0]])
            self._luts[n_rows] = lut
        return lut


@dataclass(frozen=True)
class Rows:
    """Table sizes of the model a batch is cut for.

    Attributes:
        user_rows, author_rows: the GTR model's hashed id tables.
        content_author_rows: the content encoder's author table (`GTRModel.content_author_rows`).
        with_content: whether to build the SegmentBatch (only models with a content encoder).
        categories: the model's content-category vocabulary (`GTRConfig.categories`); when
            non-empty, `SegmentBatch.context` is the (U, len(categories)) one-hot of each
            buffer's live category (all zeros for an unknown or missing category).
    """

    user_rows: int
    author_rows: int
    content_author_rows: int = 1 << 16
    with_content: bool = True
    categories: tuple[str, ...] = ()


def category_onehot(names: Sequence[str | None], categories: Sequence[str]) -> torch.Tensor:
    """(len(names), len(categories)) float32 one-hot; None / unknown names give a zero row.

    Example:
        >>> category_onehot(["b", None, "z"], ("a", "b")).tolist()
        [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    """
    pos = {c: i for i, c in enumerate(categories)}
    out = torch.zeros(len(names), len(categories))
    for i, n in enumerate(names):
        j = pos.get(n) if n is not None else None
        if j is not None:
            out[i, j] = 1.0
    return out


class ExampleTable:
    """Labeled snapshots in columns; `batch(idx, rows, store)` builds a GTRBatch.

    Columns (E examples): user, author (E,) vocab indices; ts (E,); hist_author (E, H) author
    vocab indices (-1 = padding), hist_kind, hist_age (E, H) int8; dense (E, len(DENSE_FEATURES)); exp_ids
    (E, 5, N) vocab indices (users for u2a2u, authors otherwise; -1 padding); exp_weight
    (E, 5, N); seg_rows (E, L) segment-store rows (-1 padding, left-padded); labels (E, 3);
    gift_value (E,); category (E,) index into `categories` (the live's content category, -1
    unknown); event_ids.

    Example:
        >>> from mmbee.scorer.features import AuthorFeatures, UserFeatures
        >>> t = ExampleTable(FeatureConfig(history=4, segments=2, expansion_n=3))
        >>> snap = FeatureSnapshot("w1", 1_700_000_000_000, UserFeatures("u1"), AuthorFeatures("a1"))
        >>> t.add_snapshot(snap, [], (1.0, 0.0, 0.0))
        >>> b = t.batch(np.arange(1), Rows(64, 64, with_content=False), None)
        >>> tuple(b.hist_author.shape), tuple(b.exp_ids.shape)
        ((1, 4), (1, 5, 3))
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.users = Vocab()
        self.authors = Vocab()
        self.categories = Vocab()
        self.event_ids: list[str] = []
        self._n = 0
        self._cap = 0
        h, n, seg = config.history, config.expansion_n, config.segments
        p = len(EXPANSIONS)
        self._cols: dict[str, np.ndarray] = {
            "user": np.zeros(0, np.int32),
            "author": np.zeros(0, np.int32),
            "ts": np.zeros(0, np.int64),
            "hist_author": np.zeros((0, h), np.int32),
            "hist_kind": np.zeros((0, h), np.int8),
            "hist_age": np.zeros((0, h), np.int8),
            "dense": np.zeros((0, len(DENSE_FEATURES)), np.float32),
            "exp_ids": np.zeros((0, p, n), np.int32),
            "exp_weight": np.zeros((0, p, n), np.float32),
            "seg_rows": np.zeros((0, seg), np.int32),
            "labels": np.zeros((0, 3), np.float32),
            "gift_value": np.zeros(0, np.float32),
            "category": np.zeros(0, np.int32),
        }

    def __len__(self) -> int:
        return self._n

    def column(self, name: str) -> np.ndarray:
        """A column over the stored examples (a view)."""
        return self._cols[name][: self._n]

    def _grow(self) -> None:
        cap = max(4096, 2 * self._cap)
        for k, old in self._cols.items():
            new = np.zeros((cap,) + old.shape[1:], old.dtype)
            new[: self._n] = old[: self._n]
            self._cols[k] = new
        self._cap = cap

    def add(self, example: LabeledExample, store: MemorySegmentStore | None) -> None:
        """Append a labeled example; its segments are resolved to rows of `store`."""
        s = example.snapshot
        rows: list[int] = []
        if store is not None:
            for start in s.author.segment_starts:
                r = store.row(s.author_id, start)
                if r is not None:
                    rows.append(r)
        self.add_snapshot(s, rows, example.labels, example.gift_value)

    def add_snapshot(
        self,
        s: FeatureSnapshot,
        segment_rows: Sequence[int],
        labels: tuple[float, float, float] = (0.0, 0.0, 0.0),
        gift_value: float = 0.0,
    ) -> None:
        """Append one snapshot with its segment-store rows (oldest first) and labels."""
        if self._n == self._cap:
            self._grow()
        i = self._n
        c = self._cols
        cfg = self.config
        c["user"][i] = self.users.index(s.user_id)
        c["author"][i] = self.authors.index(s.author_id)
        c["ts"][i] = s.ts_ms
        hist = s.user.history[-cfg.history :]
        k = len(hist)
        ha, hk, hg = c["hist_author"][i], c["hist_kind"][i], c["hist_age"][i]
        ha[: cfg.history - k] = -1
        hk[: cfg.history - k] = 0
        hg[: cfg.history - k] = 0
        if k:  # right-aligned: newest last
            ts, authors, kinds = zip(*hist, strict=True)
            index = self.authors.index
            ha[cfg.history - k :] = [index(a) for a in authors]
            hk[cfg.history - k :] = kinds
            hg[cfg.history - k :] = age_buckets(s.ts_ms - np.asarray(ts, np.int64))
        c["dense"][i] = dense_vector(s)
        ei, ew = c["exp_ids"][i], c["exp_weight"][i]
        ei[:] = -1
        ew[:] = 0.0
        for p, (name, exp) in enumerate(zip(EXPANSIONS, s.expansions(), strict=True)):
            if exp:
                exp = exp[: cfg.expansion_n]
                index = (self.users if name == "u2a2u" else self.authors).index
                ei[p, : len(exp)] = [index(node) for node, _ in exp]
                ew[p, : len(exp)] = [w for _, w in exp]
        sr = c["seg_rows"][i]
        sr[:] = -1
        rows = list(segment_rows)[-cfg.segments :]
        if rows:
            sr[cfg.segments - len(rows) :] = rows
        c["labels"][i] = labels
        c["gift_value"][i] = gift_value
        cat = s.author.category
        c["category"][i] = -1 if cat is None else self.categories.index(cat)
        self.event_ids.append(s.event_id)
        self._n += 1

    def batch(self, idx: np.ndarray, rows: Rows, store: MemorySegmentStore | None) -> GTRBatch:
        """The GTRBatch of examples `idx` for a model with table sizes `rows`."""
        c = {k: v[idx] for k, v in self._cols.items()}
        ulut = self.users.rows(rows.user_rows)
        alut = self.authors.rows(rows.author_rows)
        exp_v = c["exp_ids"]
        exp_rows = np.stack(  # (B, P, N); -1 -> row 0
            [(ulut if name == "u2a2u" else alut)[exp_v[:, p]] for p, name in enumerate(EXPANSIONS)],
            axis=1,
        )
        exp_mask = exp_v >= 0
        hist_mask = c["hist_author"] >= 0
        batch = GTRBatch(
            user=torch.from_numpy(ulut[c["user"]]),
            author=torch.from_numpy(alut[c["author"]]),
            hist_author=torch.from_numpy(alut[c["hist_author"]]),
            hist_kind=torch.from_numpy(c["hist_kind"].astype(np.int64)),
            hist_age=torch.from_numpy(c["hist_age"].astype(np.int64)),
            hist_mask=torch.from_numpy(hist_mask),
            dense=torch.from_numpy(c["dense"]),
            exp_ids=torch.from_numpy(exp_rows),
            exp_weight=torch.from_numpy(c["exp_weight"] * exp_mask),
            exp_mask=torch.from_numpy(exp_mask),
            labels=torch.from_numpy(c["labels"]),
        )
        if rows.with_content:
            if store is None:
                raise ValueError("a content model needs the segment store")
            batch.content, batch.content_index = self._content(c, rows, store)
        return batch

    def category_names(self, idx: np.ndarray) -> list[str | None]:
        """The live category of examples `idx` (None where unknown)."""
        ids = self.categories.ids
        return [ids[i] if i >= 0 else None for i in self.column("category")[np.asarray(idx)]]

    def _content(
        self, c: dict[str, np.ndarray], rows: Rows, store: MemorySegmentStore
    ) -> tuple[SegmentBatch, torch.Tensor]:
        key = np.concatenate(  # (B, 2 + L)
            [c["author"][:, None], c["category"][:, None], c["seg_rows"]], axis=1
        )
        uniq, inverse = np.unique(key, axis=0, return_inverse=True)
        seg = uniq[:, 2:]  # (U, L); -1 gathers the store's trailing all-zero row
        valid = seg >= 0
        visual, speech, comments, present = store.arrays()
        pres = present[seg]  # (U, L, 3)
        clut = self.authors.rows(rows.content_author_rows)
        content = SegmentBatch(
            visual=torch.from_numpy(visual[seg]).float(),  # (U, L, d_v)
            speech=torch.from_numpy(speech[seg]).float(),  # (U, L, d_s)
            comments=torch.from_numpy(comments[seg]).float(),  # (U, L, d_t)
            segment_mask=torch.from_numpy(valid),
            modality_mask=torch.from_numpy(pres.any(axis=1)),
            author_ids=torch.from_numpy(clut[uniq[:, 0]]),
            segment_modality_mask=torch.from_numpy(pres),
        )
        if rows.categories:
            ids = self.categories.ids
            names = [ids[i] if i >= 0 else None for i in uniq[:, 1]]
            content.context = category_onehot(names, rows.categories)  # (U, C)
        return content, torch.from_numpy(inverse.reshape(-1).astype(np.int64))

    def save(self, path: Path | str) -> None:
        """Write the table (columns, vocabularies, event ids) to one `.npz` file."""
        arrays: dict[str, Any] = {"col_" + k: self.column(k) for k in self._cols}
        arrays.update(
            users=np.array(self.users.ids, dtype=str),
            authors=np.array(self.authors.ids, dtype=str),
            categories=np.array(self.categories.ids, dtype=str),
            event_ids=np.array(self.event_ids, dtype=str),
            config=np.array(json.dumps(asdict(self.config))),
        )
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path | str) -> ExampleTable:
        """Read a table written by `save`."""
        with np.load(path) as z:
            table = cls(FeatureConfig(**json.loads(str(z["config"]))))
            for ids, vocab in (
                (z["users"], table.users),
                (z["authors"], table.authors),
                (z["categories"], table.categories),
            ):
                for k in ids.tolist():
                    vocab.index(k)
            table.event_ids = z["event_ids"].tolist()
            n = len(table.event_ids)
            for k in table._cols:
                table._cols[k] = z["col_" + k]
            table._n = table._cap = n
        return table

    def extend(self, examples: Iterable[LabeledExample], store: MemorySegmentStore | None) -> None:
        """`add` every example."""
        for ex in examples:
            self.add(ex, store)


def collate(
    snapshots: Sequence[FeatureSnapshot],
    config: FeatureConfig,
    rows: Rows,
    store: MemorySegmentStore | None,
) -> GTRBatch:
    """A GTRBatch of unlabeled snapshots (serving), through the same code as training batches."""
    table = ExampleTable(config)
    for s in snapshots:
        r = [] if store is None else [store.row(s.author_id, t) for t in s.author.segment_starts]
        table.add_snapshot(s, [x for x in r if x is not None])
    batch = table.batch(np.arange(len(snapshots)), rows, store)
    batch.labels = None
    return batch


class RowCache:
    """Hashed table rows of ids, memoised per table size (serving hashes each id once).

    Bounded: when it holds `max_entries` ids it starts afresh (rows are a pure function of
    the id, so forgetting only costs re-hashing).

    Example:
        >>> c = RowCache()
        >>> c.row("a1", 64) == id_row("a1", 64)
        True
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._rows: dict[tuple[str, int], int] = {}
        self._lists: dict[tuple[int, int], tuple[object, np.ndarray, np.ndarray]] = {}

    def row(self, key: str, n_rows: int) -> int:
        """`id_row(key, n_rows)`, memoised."""
        k = (key, n_rows)
        r = self._rows.get(k)
        if r is None:
            if len(self._rows) >= self.max_entries:
                self._rows.clear()
            r = self._rows[k] = id_row(key, n_rows) if key else 0
        return r

    def rows(self, keys: Sequence[str], n_rows: int) -> list[int]:
        """`row` of each key."""
        return [self.row(k, n_rows) for k in keys]

    def expansion(
        self, exp: Sequence[tuple[str, float]], n_rows: int, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows (k,), weights (k,)) of the first `n` nodes of an expansion list, memoised by
        the list object itself (streamer sides are long-lived objects shared by requests)."""
        key = (id(exp), n_rows)
        hit = self._lists.get(key)
        if hit is not None and hit[0] is exp:
            return hit[1], hit[2]
        head = exp[:n]
        out = (
            np.asarray(self.rows([node for node, _ in head], n_rows), np.int64),
            np.asarray([w for _, w in head], np.float32),
        )
        if len(self._lists) >= self.max_entries // 16:
            self._lists.clear()
        self._lists[key] = (exp, *out)
        return out


def collate_request(
    snapshots: Sequence[FeatureSnapshot],
    config: FeatureConfig,
    rows: Rows,
    store: MemorySegmentStore | None,
    cache: RowCache,
) -> GTRBatch:
    """The same GTRBatch as `collate`, for snapshots that share one user side (a score
    request): the user's history and expansions are tensorised once and broadcast."""
    if not snapshots:
        raise ValueError("no snapshots")
    user = snapshots[0].user
    if any(s.user is not user and s.user != user for s in snapshots):
        raise ValueError("collate_request needs snapshots of one user side")
    b, h, n = len(snapshots), config.history, config.expansion_n
    ts = snapshots[0].ts_ms
    hist = user.history[-h:]
    ha = np.zeros(h, np.int64)
    hk = np.zeros(h, np.int64)
    hg = np.zeros(h, np.int64)
    hm = np.zeros(h, bool)
    if hist:
        t, authors, kinds = zip(*hist, strict=True)
        k = len(hist)
        ha[h - k :] = cache.rows(authors, rows.author_rows)
        hk[h - k :] = kinds
        hg[h - k :] = age_buckets(ts - np.asarray(t, np.int64))
        hm[h - k :] = True
    p = len(EXPANSIONS)
    ei = np.zeros((b, p, n), np.int64)
    ew = np.zeros((b, p, n), np.float32)
    em = np.zeros((b, p, n), bool)

    def fill(i: slice | int, pos: int, name: str, exp: Sequence[tuple[str, float]]) -> None:
        if exp:
            size = rows.user_rows if name == "u2a2u" else rows.author_rows
            r, w = cache.expansion(exp, size, n)
            ei[i, pos, : len(r)] = r
            ew[i, pos, : len(r)] = w
            em[i, pos, : len(r)] = True

    n_user = len(user.expansions)
    for pos, (name, exp) in enumerate(zip(EXPANSIONS[:n_user], user.expansions, strict=True)):
        fill(slice(None), pos, name, exp)
    for i, s in enumerate(snapshots):
        for pos, (name, exp) in enumerate(
            zip(EXPANSIONS[n_user:], s.author.expansions, strict=True), start=n_user
        ):
            fill(i, pos, name, exp)
    author_ids = [s.author_id for s in snapshots]
    batch = GTRBatch(
        user=torch.full((b,), cache.row(user.user_id, rows.user_rows), dtype=torch.long),
        author=torch.tensor(cache.rows(author_ids, rows.author_rows), dtype=torch.long),
        hist_author=torch.from_numpy(ha).expand(b, h),
        hist_kind=torch.from_numpy(hk).expand(b, h),
        hist_age=torch.from_numpy(hg).expand(b, h),
        hist_mask=torch.from_numpy(hm).expand(b, h),
        dense=torch.from_numpy(dense_matrix(snapshots)),
        exp_ids=torch.from_numpy(ei),
        exp_weight=torch.from_numpy(ew),
        exp_mask=torch.from_numpy(em),
    )
    if rows.with_content:
        if store is None:
            raise ValueError("a content model needs the segment store")
        seg = np.full((b, config.segments), -1, np.int64)
        for i, s in enumerate(snapshots):
            found = [store.row(s.author_id, t) for t in s.author.segment_starts]
            r = [x for x in found if x is not None][-config.segments :]
            if r:
                seg[i, config.segments - len(r) :] = r
        visual, speech, comments, present = store.arrays()
        pres = present[seg]  # (B, L, 3)
        batch.content = SegmentBatch(
            visual=torch.from_numpy(visual[seg]).float(),  # (B, L, d_v)
            speech=torch.from_numpy(speech[seg]).float(),  # (B, L, d_s)
            comments=torch.from_numpy(comments[seg]).float(),  # (B, L, d_t)
            segment_mask=torch.from_numpy(seg >= 0),
            modality_mask=torch.from_numpy(pres.any(axis=1)),
            author_ids=torch.tensor(
                cache.rows(author_ids, rows.content_author_rows), dtype=torch.long
            ),
            segment_modality_mask=torch.from_numpy(pres),
        )
        if rows.categories:
            batch.content.context = category_onehot(
                [s.author.category for s in snapshots], rows.categories
            )  # (B, C)
        batch.content_index = torch.arange(b)
    return batch
