"""Non-learned reference scorers: the popularity baseline a trained model must beat.

Popularity: the streamer's smoothed gift rate as it was at the impression,
(gifts before + 0.1) / (impressions before + 10), read from the point-in-time counters of the
snapshot (the `log_author_gift_rate` dense feature), so it leaks nothing either.

Example:
    >>> import numpy as np
    >>> from mmbee.scorer.features import AuthorFeatures, FeatureConfig, FeatureSnapshot, UserFeatures
    >>> from mmbee.scorer.dataset import ExampleTable
    >>> t = ExampleTable(FeatureConfig())
    >>> for gifts in (0, 5):
    ...     t.add_snapshot(FeatureSnapshot("w", 1_700_000_000_000, UserFeatures("u"),
    ...                                    AuthorFeatures("a", watches=100, gifts=gifts)), [])
    >>> s = popularity_scores(t, np.arange(2))
    >>> bool(s[1] > s[0])
    True
"""

from __future__ import annotations

import numpy as np

from mmbee.scorer.batch import DENSE_FEATURES
from mmbee.scorer.dataset import ExampleTable

__all__ = ["popularity_scores"]

_RATE = DENSE_FEATURES.index("log_author_gift_rate")


def popularity_scores(table: ExampleTable, idx: np.ndarray) -> np.ndarray:
    """The streamer's point-in-time smoothed gift rate for examples `idx`: (len(idx),) float64."""
    return np.exp(table.column("dense")[np.asarray(idx), _RATE].astype(np.float64))
