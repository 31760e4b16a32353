"""Every node's metapath expansions at once, as chunked sparse products (the full cache rebuild).

Gives bitwise the same lists as `mmbee.graph.metapaths` node by node: both take their transition
probabilities from the same `Transitions`, sum a hop's contributions over the frontier in id
order (scipy's CSR product accumulates row entries in column order, columns are sorted ids),
keep positive weights only and break ties by id. Only the loop moves into C.

Shapes: U users, A authors (both in sorted id order), C users or authors in one chunk.

Example:
    >>> from mmbee.graph.state import GiftGraph, GraphConfig
    >>> g = GiftGraph(GraphConfig())
    >>> for u, a in [("u1", "a1"), ("u2", "a1"), ("u2", "a2")]:
    ...     _ = g.add_gift(u, a, 1_750_000_000_000, 1.0)
    >>> users, authors = bulk_expansions(g, ["u1"], ["a2"])
    >>> users["u1"] == user_expansions(g, "u1"), authors["a2"] == author_expansions(g, "a2")
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp

from mmbee.graph.metapaths import (
    ExpansionConfig,
    Expansions,
    Transitions,
    author_expansions,
    user_expansions,
)
from mmbee.graph.state import GiftGraph

__all__ = ["bulk_expansions", "iter_bulk_expansions", "CHUNK"]

CHUNK = 4096
"""Rows per sparse product: bounds peak memory (a popular author fans out to many users)."""

_Steps = Callable[[str], list[tuple[str, float]]]


def _csr(
    rows: Sequence[str], steps: _Steps, limit: int | None, col_index: dict[str, int], n_cols: int
) -> sp.csr_matrix:
    """One transition matrix: row r holds steps(rows[r])[:limit], columns in id order."""
    indptr = [0]
    cols: list[int] = []
    vals: list[float] = []
    for x in rows:
        s = sorted(steps(x)[:limit])  # by id = by column
        cols.extend(col_index[y] for y, _ in s)
        vals.extend(p for _, p in s)
        indptr.append(len(cols))
    return sp.csr_matrix(
        (np.asarray(vals, dtype=np.float64), np.asarray(cols, dtype=np.int64), np.asarray(indptr)),
        shape=(len(rows), n_cols),
    )


def _coo(m: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col, value) of a CSR matrix's stored entries, in storage order."""
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return rows, m.indices.astype(np.int64), m.data


_PAD_BUDGET = 1 << 22
"""Cells of the padded (rows, longest row) block one vectorised per-row operation may use."""


def _blocks(lengths: np.ndarray, rows: np.ndarray) -> Iterator[np.ndarray]:
    """`rows` (non-empty ones) in blocks of similar length: padding wastes < half a block."""
    rows = rows[np.argsort(lengths[rows], kind="stable")]
    i = 0
    while i < len(rows):
        shortest, j = lengths[rows[i]], i + 1
        while (
            j < len(rows)
            and lengths[rows[j]] <= 2 * shortest
            and (j + 1 - i) * lengths[rows[j]] <= _PAD_BUDGET
        ):
            j += 1
        yield rows[i:j]
        i = j


def _padded(
    indptr: np.ndarray, lengths: np.ndarray, block: np.ndarray, data: np.ndarray, fill: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each block row's entries as one padded row: (values (G, W), valid (G, W), positions)."""
    offs = np.arange(int(lengths[block].max()))  # (W,)
    pos = indptr[block][:, None] + offs[None, :]  # (G, W)
    valid = offs[None, :] < lengths[block][:, None]  # (G, W)
    return np.where(valid, data[np.minimum(pos, len(data) - 1)], fill), valid, pos


def _select(m: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the k largest positive entries, ties by column; as (row, col, value) sorted by
    (row, -value, col). A row longer than k is first cut at its k-th largest value (one
    `np.partition` per block of similar rows); the ~k survivors per row are then ordered by a
    stable per-row argsort over column-sorted rows."""
    m = m.tocsr()
    indptr, vals = m.indptr, m.data
    lengths = np.diff(indptr)
    threshold = np.zeros(m.shape[0])
    for block in _blocks(lengths, np.flatnonzero(lengths > k)):
        # pad with distinct negatives: many equal values make introselect crawl
        pad = -1.0 - np.arange(int(lengths[block].max()), dtype=np.float64)[None, :]
        padded, _, _ = _padded(indptr, lengths, block, vals, pad)  # (G, W)
        width = padded.shape[1]
        threshold[block] = np.partition(padded, width - k, axis=1)[:, width - k]
    keep = np.flatnonzero((vals >= np.repeat(threshold, lengths)) & (vals > 0.0))
    rows = np.searchsorted(indptr, keep, side="right") - 1
    counts = np.bincount(rows, minlength=m.shape[0])
    survivors = sp.csr_matrix(
        (vals[keep], m.indices[keep], np.r_[0, np.cumsum(counts)]), shape=m.shape
    )
    survivors.sort_indices()  # column order inside each row: the tie-break
    s_ptr, s_cols, s_vals = survivors.indptr, survivors.indices, survivors.data
    out_r, out_c, out_v = [], [], []
    for block in _blocks(counts, np.flatnonzero(counts)):
        neg, valid, pos = _padded(s_ptr, counts, block, -s_vals, np.array(np.inf))  # (G, W)
        order = np.argsort(neg, axis=1, kind="stable")[:, :k]  # (G, <=k)
        pick = np.take_along_axis(pos, order, axis=1)
        ok = np.take_along_axis(valid, order, axis=1)
        out_r.append(np.broadcast_to(block[:, None], pick.shape)[ok])
        out_c.append(s_cols[pick[ok]])
        out_v.append(s_vals[pick[ok]])
    if not out_r:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    r, c, v = np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)
    order = np.argsort(r, kind="stable")  # blocks came by length: back to row order
    return r[order], c[order].astype(np.int64), v[order]


def _drop(m: sp.csr_matrix, mask: sp.csr_matrix) -> sp.csr_matrix:
    """m without the entries where `mask` (0/1, same shape) is 1: v - v = 0 exactly, v - 0 = v."""
    return (m - m.multiply(mask)).tocsr()


def _lists(
    n_rows: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, names: np.ndarray
) -> list[list[tuple[str, float]]]:
    """Row-sorted (row, col, value) triples as one (name, value) list per row."""
    pairs = list(zip(names[cols].tolist(), vals.tolist(), strict=True))
    bounds = np.searchsorted(rows, np.arange(n_rows + 1)).tolist()
    return [pairs[bounds[i] : bounds[i + 1]] for i in range(n_rows)]


def bulk_expansions(
    graph: GiftGraph,
    users: Sequence[str],
    authors: Sequence[str],
    config: ExpansionConfig | None = None,
    transitions: Transitions | None = None,
    chunk: int = CHUNK,
) -> tuple[dict[str, Expansions], dict[str, Expansions]]:
    """Expansions of the given users and authors (ids the graph knows), equal to the per-node
    `user_expansions` / `author_expansions`; returns ({user: ...}, {author: ...})."""
    out: dict[str, dict[str, Expansions]] = {"user": {}, "author": {}}
    for kind, node, exp in iter_bulk_expansions(graph, users, authors, config, transitions, chunk):
        out[kind][node] = exp
    return out["user"], out["author"]


def iter_bulk_expansions(
    graph: GiftGraph,
    users: Sequence[str],
    authors: Sequence[str],
    config: ExpansionConfig | None = None,
    transitions: Transitions | None = None,
    chunk: int = CHUNK,
) -> Iterator[tuple[Literal["user", "author"], str, Expansions]]:
    """`bulk_expansions` as a stream of (kind, node id, expansions), one chunk in memory."""
    config = config or ExpansionConfig()
    t = transitions or Transitions(graph, config)
    n, width = config.top_n, config.beam_width
    all_users, all_authors = graph.users(), graph.authors()
    uix = {u: i for i, u in enumerate(all_users)}
    aix = {a: i for i, a in enumerate(all_authors)}
    n_u, n_a = len(all_users), len(all_authors)
    user_names = np.asarray(all_users, dtype=object)
    author_names = np.asarray(all_authors, dtype=object)
    ua = _csr(all_users, t.user_to_author, None, aix, n_a)  # (U, A)
    au = _csr(all_authors, t.author_to_user, None, uix, n_u)  # (A, U)
    aa = _csr(all_authors, t.author_to_author, None, aix, n_a)  # (A, A)
    gifted = sp.csr_matrix(
        (
            np.ones(graph.num_edges),  # 0/1 mask
            np.asarray(
                [aix[a] for u in all_users for a in sorted(graph.user_out[u])], dtype=np.int64
            ),
            np.r_[0, np.cumsum([len(graph.user_out[u]) for u in all_users])],
        ),
        shape=(n_u, n_a),
    )  # (U, A) every edge, untruncated

    for lo in range(0, len(users), chunk):
        part = list(users[lo : lo + chunk])
        c = len(part)
        idx = np.asarray([uix[u] for u in part], dtype=np.int64)  # (C,)
        self_mask = sp.csr_matrix((np.ones(c), idx, np.arange(c + 1)), shape=(c, n_u))  # (C, U)
        first = _csr(part, t.user_to_author, width, aix, n_a)  # (C, A)
        r, col, v = _select(_drop(first @ au, self_mask), max(n, width))  # u2a2u, (C, U)
        u2a2u = _lists(c, r, col, v, user_names)
        br, bc, bv = _select(sp.csr_matrix((v, (r, col)), shape=(c, n_u)), width)  # the beam
        frontier = sp.csr_matrix((bv, (br, bc)), shape=(c, n_u))  # (C, U)
        frontier.sort_indices()  # hop in id order, like the per-node path
        u2a2u2a = _lists(c, *_select(_drop(frontier @ ua, gifted[idx]), n), author_names)
        u2a2a = _lists(c, *_select(first @ aa, n), author_names)
        for i, u in enumerate(part):
            if first.indptr[i] == first.indptr[i + 1]:
                yield "user", u, user_expansions(graph, u, config, t)  # nothing to walk from
            else:
                yield "user", u, {"u2a2u": u2a2u[i][:n], "u2a2u2a": u2a2u2a[i], "u2a2a": u2a2a[i]}

    for lo in range(0, len(authors), chunk):
        part = list(authors[lo : lo + chunk])
        c = len(part)
        idx = np.asarray([aix[a] for a in part], dtype=np.int64)
        self_mask = sp.csr_matrix((np.ones(c), idx, np.arange(c + 1)), shape=(c, n_a))  # (C, A)
        first = _csr(part, t.author_to_user, width, uix, n_u)  # (C, U)
        a2u2a = _lists(c, *_select(_drop(first @ ua, self_mask), n), author_names)
        for i, a in enumerate(part):
            if first.indptr[i] == first.indptr[i + 1]:
                yield "author", a, author_expansions(graph, a, config, t)
            else:
                yield "author", a, {"a2a": t.a2a(a)[:n], "a2u2a": a2u2a[i]}
