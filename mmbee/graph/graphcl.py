"""GraphCL (MMBee Algorithm 1): self-supervised user and author embeddings on the U2A graph.

Nodes share one index: users 0..U-1, authors U..U+A-1. Theta is an embedding table (N, d)
(N = U + A); `num_layers` LightGCN propagations (torch-geometric `LGConv`, symmetric-normalised,
unweighted U2A edges both ways) smooth it, and the layer mean z is the node representation.
For each anchor v (every node, shuffled each epoch, in mini-batches):
    positive p  one node drawn from v's metapath neighbourhood, with probability proportional to
                its expansion weight: u2a2u for a user, a2u2a for an author (same type as v)
    negatives   Q nodes drawn uniformly from v's node type
With s(x, y) = cos(z_x, z_y) / tau:
    L_CE  = mean_v [ -log sigma(s(v, p)) - (1/Q) sum_n log(1 - sigma(s(v, n))) ]   (binary CE)
    L_NCE = mean_v [ -log( exp s(v, p) / (exp s(v, p) + sum_n exp s(v, n)) ) ]     (InfoNCE)
    L     = L_CE + lambda * L_NCE
Anchors without any positive (their metapath list is empty) are skipped.

Shapes: N nodes, U users, A authors, d `dim`, B anchors per batch, Q negatives per anchor.

Example:
    >>> from mmbee.graph.state import GiftGraph, GraphConfig
    >>> g = GiftGraph(GraphConfig())
    >>> for u, a in [("u1", "a1"), ("u2", "a1"), ("u2", "a2"), ("u3", "a2")]:
    ...     _ = g.add_gift(u, a, 1_750_000_000_000, 1.0)
    >>> emb, history = train_graphcl(g, GraphCLConfig(dim=8, epochs=2))
    >>> emb.embeddings(["u1", "nobody"], "user").shape, emb.mask(["u1", "nobody"], "user").tolist()
    (torch.Size([2, 8]), [True, False])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbee.graph.metapaths import (
    METAPATH_KIND,
    ExpansionConfig,
    Expansions,
    Metapath,
    Transitions,
    expand,
)
from mmbee.graph.state import GiftGraph

__all__ = [
    "GraphCLConfig",
    "GraphCL",
    "NodeEmbeddings",
    "ExpansionTensors",
    "graphcl_loss",
    "train_graphcl",
    "u2a_edge_index",
]

NodeKind = Literal["user", "author"]


@dataclass(frozen=True)
class GraphCLConfig:
    """Hyperparameters of GraphCL (MMBee leaves them open; docs/graph.md says why these).

    Example:
        >>> GraphCLConfig(dim=32).lam
        1.0
    """

    dim: int = 64
    num_layers: int = 2
    epochs: int = 20
    batch_size: int = 1024
    num_negatives: int = 16
    lam: float = 1.0
    temperature: float = 0.2
    lr: float = 0.01
    positives: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.num_layers < 0 or self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"invalid GraphCLConfig {self}")
        if self.num_negatives < 1 or self.positives < 1 or self.temperature <= 0:
            raise ValueError(f"invalid GraphCLConfig {self}")


def u2a_edge_index(graph: GiftGraph, users: Sequence[str], authors: Sequence[str]) -> Tensor:
    """The U2A edges in both directions over the joint index (users, then authors).

    Shapes:
        returns (2, 2E) int64.
    """
    uix = {u: i for i, u in enumerate(users)}
    aix = {a: len(users) + j for j, a in enumerate(authors)}
    src, dst = [], []
    for u, row in graph.user_out.items():
        for a in row:
            src.append(uix[u])
            dst.append(aix[a])
    ei = torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)  # (2, E)
    return torch.cat([ei, ei.flip(0)], dim=1)  # (2, 2E)


class GraphCL(nn.Module):
    """Theta (N, d) plus `num_layers` LightGCN propagations over the U2A graph.

    Example:
        >>> m = GraphCL(num_nodes=3, config=GraphCLConfig(dim=4, num_layers=1))
        >>> m(torch.tensor([[0, 2], [2, 0]])).shape
        torch.Size([3, 4])
    """

    def __init__(
        self, num_nodes: int, config: GraphCLConfig, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        from torch_geometric.nn import LGConv

        self.embedding = nn.Embedding(num_nodes, config.dim)
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, 0.1, generator=generator)
        self.convs = nn.ModuleList(LGConv() for _ in range(config.num_layers))

    def forward(self, edge_index: Tensor) -> Tensor:
        """Node representations: the mean of Theta and its propagations.

        Shapes:
            edge_index: (2, E') int64 over the joint node index.
            returns: (N, d).
        """
        x = self.embedding.weight  # (N, d)
        out = x
        for conv in self.convs:
            x = conv(x, edge_index)  # (N, d)
            out = out + x
        return out / (len(self.convs) + 1)


def graphcl_loss(
    z: Tensor, anchors: Tensor, positives: Tensor, negatives: Tensor, config: GraphCLConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """L = L_CE + lambda * L_NCE (see the module docstring); returns (L, L_CE, L_NCE).

    Shapes:
        z: (N, d); anchors, positives: (B,) int64; negatives: (B, Q) int64.
    """
    zn = F.normalize(z, dim=-1)
    a = zn[anchors]  # (B, d)
    s_pos = (a * zn[positives]).sum(-1) / config.temperature  # (B,)
    s_neg = torch.einsum("bd,bqd->bq", a, zn[negatives]) / config.temperature  # (B, Q)
    l_ce = F.softplus(-s_pos).mean() + F.softplus(s_neg).mean(-1).mean()
    logits = torch.cat([s_pos[:, None], s_neg], dim=1)  # (B, 1 + Q)
    l_nce = (torch.logsumexp(logits, dim=1) - s_pos).mean()
    return l_ce + config.lam * l_nce, l_ce, l_nce


class ExpansionTensors(NamedTuple):
    """One metapath expansion as tensors, padded to n.

    Shapes: vectors (n, d), weights (n,), mask (n,) bool (True = a known node is there).
    """

    vectors: Tensor
    weights: Tensor
    mask: Tensor


class NodeEmbeddings:
    """Trained node embeddings (unit vectors) with their id vocabulary; unknown ids are zeros.

    Example:
        >>> e = NodeEmbeddings(["u1"], ["a1"], torch.ones(1, 2), torch.ones(1, 2))
        >>> e.lookup(["a1", "a9"], "author")[1].tolist()
        [True, False]
    """

    def __init__(
        self,
        users: Sequence[str],
        authors: Sequence[str],
        user_vectors: Tensor,
        author_vectors: Tensor,
        config: GraphCLConfig | None = None,
        theta: Tensor | None = None,
    ) -> None:
        if user_vectors.shape[0] != len(users) or author_vectors.shape[0] != len(authors):
            raise ValueError("vocab and vector counts differ")
        self.users = list(users)
        self.authors = list(authors)
        self.user_vectors = user_vectors  # (U, d)
        self.author_vectors = author_vectors  # (A, d)
        self.config = config or GraphCLConfig(dim=user_vectors.shape[1])
        self.theta = theta
        self._index = {
            "user": {u: i for i, u in enumerate(self.users)},
            "author": {a: i for i, a in enumerate(self.authors)},
        }

    @property
    def dim(self) -> int:
        """d, the embedding width."""
        return int(self.user_vectors.shape[1])

    def _rows(self, ids: Sequence[str], kind: NodeKind) -> Tensor:
        index = self._index[kind]
        return torch.tensor([index.get(i, -1) for i in ids], dtype=torch.long)  # (n,)

    def lookup(self, ids: Sequence[str], kind: NodeKind) -> tuple[Tensor, Tensor]:
        """(vectors (n, d), known (n,) bool); unknown ids get a zero vector and False."""
        rows = self._rows(ids, kind)
        table = self.user_vectors if kind == "user" else self.author_vectors
        known = rows >= 0
        out = torch.zeros(len(ids), self.dim, dtype=table.dtype)
        if known.any():
            out[known] = table[rows[known]]
        return out, known

    def embeddings(self, ids: Sequence[str], kind: NodeKind) -> Tensor:
        """Vectors (n, d) of `ids` of one node type; zeros for unknown ids (see `mask`)."""
        return self.lookup(ids, kind)[0]

    def mask(self, ids: Sequence[str], kind: NodeKind) -> Tensor:
        """(n,) bool: True where the id is in the vocabulary."""
        return self._rows(ids, kind) >= 0

    def for_expansions(self, expansions: Expansions, n: int) -> dict[str, ExpansionTensors]:
        """Each metapath's list as padded tensors: the E^(u) / E^(a) sets of MMBee's GIE."""
        out = {}
        for metapath, items in expansions.items():
            items = items[:n]
            vec, known = self.lookup([i for i, _ in items], METAPATH_KIND[metapath])
            vectors = torch.zeros(n, self.dim)
            weights = torch.zeros(n)
            mask = torch.zeros(n, dtype=torch.bool)
            vectors[: len(items)] = vec
            weights[: len(items)] = torch.tensor([w for _, w in items], dtype=torch.float32)
            mask[: len(items)] = known
            out[metapath] = ExpansionTensors(vectors, weights * mask, mask)
        return out

    def checkpoint(self) -> dict[str, Any]:
        """`{"config", "state_dict", "vocab"}`: loadable with `torch.load(weights_only=True)`."""
        state = {"user": self.user_vectors, "author": self.author_vectors}
        if self.theta is not None:
            state["embedding.weight"] = self.theta
        return {
            "config": asdict(self.config),
            "state_dict": state,
            "vocab": {"user": self.users, "author": self.authors},
        }

    def save(self, path: Path | str) -> None:
        """Write the checkpoint to `path`."""
        torch.save(self.checkpoint(), str(path))

    @classmethod
    def load(cls, path: Path | str) -> NodeEmbeddings:
        """Read a checkpoint written by `save` (weights_only)."""
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
        sd = ck["state_dict"]
        return cls(
            ck["vocab"]["user"],
            ck["vocab"]["author"],
            sd["user"],
            sd["author"],
            GraphCLConfig(**ck["config"]),
            sd.get("embedding.weight"),
        )


def _positive_table(
    graph: GiftGraph, nodes: Sequence[str], kind: NodeKind, index: dict[str, int], k: int
) -> tuple[list[int], Tensor, Tensor]:
    """Anchors with positives, padded positive ids (n, k) and their sampling weights (n, k)."""
    t = Transitions(graph, ExpansionConfig(top_n=k))
    metapath: Metapath = "u2a2u" if kind == "user" else "a2u2a"
    anchors, ids, ws = [], [], []
    for node in nodes:
        items = expand(graph, node, metapath, t.config, t)
        if not items:
            continue
        anchors.append(index[node])
        pad = k - len(items)
        ids.append([index[i] for i, _ in items] + [0] * pad)
        ws.append([w for _, w in items] + [0.0] * pad)
    if not anchors:
        return [], torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
    return anchors, torch.tensor(ids, dtype=torch.long), torch.tensor(ws, dtype=torch.float32)


def train_graphcl(
    graph: GiftGraph, config: GraphCLConfig | None = None
) -> tuple[NodeEmbeddings, list[float]]:
    """Train GraphCL on the graph; returns the embeddings and the mean loss of each epoch."""
    config = config or GraphCLConfig()
    gen = torch.Generator().manual_seed(config.seed)
    users, authors = graph.users(), graph.authors()
    n_u, n_a = len(users), len(authors)
    uidx = {u: i for i, u in enumerate(users)}
    aidx = {a: n_u + j for j, a in enumerate(authors)}
    ua, up, uw = _positive_table(graph, users, "user", uidx, config.positives)
    aa, ap, aw = _positive_table(graph, authors, "author", aidx, config.positives)
    anchors = torch.tensor(ua + aa, dtype=torch.long)  # (M,)
    pos_ids = torch.cat([up, ap])  # (M, k)
    pos_w = torch.cat([uw, aw])  # (M, k)
    is_user = anchors < n_u  # (M,)
    edge_index = u2a_edge_index(graph, users, authors)
    model = GraphCL(n_u + n_a, config, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[float] = []
    for _ in range(config.epochs if len(anchors) else 0):
        order = torch.randperm(len(anchors), generator=gen)
        total, steps = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            b = order[start : start + config.batch_size]  # (B,)
            pick = torch.multinomial(pos_w[b], 1, generator=gen).squeeze(1)  # (B,)
            positives = pos_ids[b, pick]  # (B,)
            r = torch.rand(len(b), config.num_negatives, generator=gen)  # (B, Q)
            user_neg = (r * n_u).long().clamp_max(max(n_u - 1, 0))
            author_neg = n_u + (r * n_a).long().clamp_max(max(n_a - 1, 0))
            negatives = torch.where(is_user[b, None], user_neg, author_neg)  # (B, Q)
            z = model(edge_index)  # (N, d)
            loss, _, _ = graphcl_loss(z, anchors[b], positives, negatives, config)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        history.append(total / steps)
    with torch.no_grad():
        z = F.normalize(model(edge_index), dim=-1)  # (N, d)
    emb = NodeEmbeddings(
        users,
        authors,
        z[:n_u].clone(),
        z[n_u:].clone(),
        config,
        model.embedding.weight.detach().clone(),
    )
    return emb, history
