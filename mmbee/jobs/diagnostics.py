"""The ablation's diagnostics: the simulator's truth per example, ceiling inputs, linear probes.

They answer where a shortfall of the content (MFQ) and graph (GIE) branches lies:
- in the data: can a linear probe read the moment from the raw features of the newest closed
  segment, and the target's community from the explicit graph-membership features?
- in the encoder: can it read them from the trained h_m / h_g?
- in the training: how much does the base model gain when handed the truth itself as wide
  inputs (the ceiling variants)?
Nothing here ships: it reads the simulator's truth files, which no model may see.

Example:
    >>> truth = load_truth(logdir, built)  # doctest: +SKIP
    >>> truth.wide_columns(("idol",)).shape  # doctest: +SKIP
    (488729, 1)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmbee.jobs.train import BuiltExamples
from mmbee.scorer.batch import GTRBatch
from mmbee.scorer.dataset import ExampleTable, Rows
from mmbee.scorer.layers import graph_membership
from mmbee.scorer.train import rows_for
from mmbee.simulator.content import MOMENTS
from mmbee.simulator.reader import read_communities, read_hidden_state

__all__ = ["CEILINGS", "Truth", "load_truth", "with_extra", "run_probes"]

CEILINGS: dict[str, tuple[str, ...]] = {
    "sim+true_moment": ("moment",),
    "sim+true_idol_community": ("idol", "community"),
}
"""Ceiling variants: SIM plus these truth columns as wide inputs."""


@dataclass(frozen=True)
class Truth:
    """The simulator's hidden state of every example (rows of the example table).

    Attributes:
        moment: (E,) index into `MOMENTS` of the stream's moment at the impression.
        idol: (E,) True where the target streamer is the viewer's idol.
        community: (E,) 0 / 1 / 2: the target is outside / a ring neighbour of / in the
            viewer's home community (`world.py`: gift rate x 1, x 3.8, x 9).
    """

    moment: np.ndarray
    idol: np.ndarray
    community: np.ndarray

    def wide_columns(self, names: tuple[str, ...]) -> np.ndarray:
        """Truth as wide inputs: moment one-hot (special moments), idol flag, community flags."""
        cols: list[np.ndarray] = []
        for name in names:
            if name == "moment":
                cols += [(self.moment == k).astype(np.float32) for k in range(1, len(MOMENTS))]
            elif name == "idol":
                cols.append(self.idol.astype(np.float32))
            elif name == "community":
                cols += [(self.community == k).astype(np.float32) for k in (1, 2)]
            else:
                raise ValueError(f"unknown truth column {name!r}")
        return np.stack(cols, axis=1)  # (E, C)


def load_truth(logdir: Path, built: BuiltExamples) -> Truth | None:
    """The truth of `built`'s examples from a simulated log (None for a log without truth)."""
    root = Path(logdir)
    if not (root / "truth" / "users.csv").exists():
        return None
    moments, idols = read_hidden_state(root)
    communities = read_communities(root)
    k = int(json.loads((root / "mmbee_world.json").read_text())["config"]["n_communities"])
    t = built.table
    index = {m: i for i, m in enumerate(MOMENTS)}
    users = np.array(t.users.ids, dtype=object)[t.column("user")]
    authors = np.array(t.authors.ids, dtype=object)[t.column("author")]
    ring = np.abs(
        np.array([communities[u] for u in users]) - np.array([communities[a] for a in authors])
    )
    ring = np.minimum(ring, k - ring)
    return Truth(
        moment=np.array([index[moments[e]] for e in t.event_ids], np.int64),
        idol=np.array([idols.get(u) == a for u, a in zip(users, authors, strict=True)]),
        community=np.where(ring == 0, 2, np.where(ring == 1, 1, 0)),
    )


class _TableWithExtra:
    """An example table whose batches carry `extra` (diagnostic wide inputs)."""

    def __init__(self, table: ExampleTable, extra: np.ndarray) -> None:
        self._table, self._extra = table, extra.astype(np.float32)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def __len__(self) -> int:
        return len(self._table)

    def batch(self, idx: np.ndarray, rows: Rows, store: Any) -> GTRBatch:
        b = self._table.batch(idx, rows, store)
        b.extra = torch.from_numpy(self._extra[np.asarray(idx)])
        return b


def with_extra(table: ExampleTable, extra: np.ndarray) -> Any:
    """`table` whose batches carry `extra[idx]` as `GTRBatch.extra` (for `GTRConfig.extra_wide`)."""
    return _TableWithExtra(table, extra)


def _newest_segment_features(built: BuiltExamples, idx: np.ndarray) -> np.ndarray:
    """Raw features of each modality's newest present segment: (n, d_v + d_s + d_t)."""
    visual, speech, comments, present = built.store.arrays()
    seg = built.table.column("seg_rows")[idx]  # (n, L), -1 padding, oldest -> newest
    out = []
    for m, feats in enumerate((visual, speech, comments)):
        ok = (seg >= 0) & present[seg, m]  # (n, L)
        last = np.where(ok.any(1), ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1), -1)
        rows = np.where(last >= 0, seg[np.arange(len(idx)), np.maximum(last, 0)], -1)
        x = feats[rows].astype(np.float32)
        x[rows < 0] = 0.0
        out.append(x)
    return np.hstack(out)


@torch.no_grad()
def _model_features(model: Any, built: BuiltExamples, idx: np.ndarray, what: str) -> np.ndarray:
    """h_m (the projected content embedding) or h_g of examples `idx` from a trained model."""
    rows = rows_for(model)
    parts = []
    for start in range(0, len(idx), 1024):
        b = built.table.batch(idx[start : start + 1024], rows, built.store)
        if what == "h_m":
            emb = model.content(b.content).embedding  # (U, out_dim)
            parts.append(model.content_proj(emb)[b.content_index].numpy())  # (B, D)
        else:
            parts.append(model.gie(b).numpy())  # (B, D)
    return np.vstack(parts)


def _membership(model: Any, built: BuiltExamples, idx: np.ndarray) -> np.ndarray:
    b = built.table.batch(idx, rows_for(model), None)
    return graph_membership(
        b.exp_ids, b.exp_weight, b.exp_mask, b.author, b.hist_author, b.hist_kind, b.hist_mask
    ).numpy()


def _probe(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(max_iter=300, class_weight="balanced")
    clf.fit(scaler.transform(x_tr), y_tr)
    pred = clf.predict(scaler.transform(x_te))
    return {
        "classes": int(len(np.unique(y_tr))),
        "balanced_accuracy": float(balanced_accuracy_score(y_te, pred)),
        "majority_share": float(np.bincount(y_te).max() / len(y_te)),
        "n_train": int(len(y_tr)),
        "n_test": int(len(y_te)),
    }


def run_probes(
    built: BuiltExamples,
    truth: Truth,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    models: dict[str, Any],
    seed: int = 0,
    n: int = 6000,
) -> dict[str, dict[str, Any]]:
    """Linear probes (balanced logistic regression, fit on training impressions, scored on the
    test day): the moment from the newest segment's raw features and from a trained h_m; the
    target's community class from the graph-membership features and from a trained h_g.

    The moment probes use impressions of streams with at least one closed segment; classes are
    balanced in the loss, so chance is 1 / classes whatever the moment mix."""
    rng = np.random.default_rng([seed, 7])
    seg = built.table.column("seg_rows")
    with_seg: np.ndarray = np.asarray((seg >= 0).any(axis=1))

    def sample(idx: np.ndarray, need_segments: bool) -> np.ndarray:
        pool = idx[with_seg[idx]] if need_segments else idx
        return np.sort(rng.choice(pool, min(n, len(pool)), replace=False))

    out: dict[str, dict[str, Any]] = {}
    tr, te = sample(train_idx, True), sample(test_idx, True)
    y_tr, y_te = truth.moment[tr], truth.moment[te]
    out["moment <- newest segment (raw)"] = _probe(
        _newest_segment_features(built, tr), y_tr, _newest_segment_features(built, te), y_te
    )
    content = next((m for v, m in models.items() if m is not None and m.content is not None), None)
    if content is not None:
        out[f"moment <- h_m ({content.config.variant})"] = _probe(
            _model_features(content, built, tr, "h_m"),
            y_tr,
            _model_features(content, built, te, "h_m"),
            y_te,
        )
    tr, te = sample(train_idx, False), sample(test_idx, False)
    y_tr, y_te = truth.community[tr], truth.community[te]
    graph = next((m for v, m in models.items() if m is not None and m.gie is not None), None)
    if graph is not None:
        out["community <- graph membership (raw)"] = _probe(
            _membership(graph, built, tr), y_tr, _membership(graph, built, te), y_te
        )
        out[f"community <- h_g ({graph.config.variant})"] = _probe(
            _model_features(graph, built, tr, "h_g"),
            y_tr,
            _model_features(graph, built, te, "h_g"),
            y_te,
        )
    return out
