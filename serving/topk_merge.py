"""The one merge of top-k lists from several shards (local ones inside a server, or servers
merged by the client): per query row, the k best by score descending, then global gallery index
ascending, the order kernels.search ranks by (its packed keys break ties to the lower index),
so S shards answer exactly what one search over the whole gallery answers. Numpy only."""
from __future__ import annotations

import numpy as np


def top_positions(scores: np.ndarray, indices: np.ndarray, k: int) -> np.ndarray:
    """Columns [rows, min(k, W)] of the k best of each row of scores and global indices [rows, W]
    (the shards' lists side by side, each sorted or not), best first."""
    scores = np.where(scores == 0, 0.0, scores)  # -0.0 and 0.0 are one score, as in the kernels' keys
    return np.lexsort((indices, -scores), axis=-1)[:, :k]
