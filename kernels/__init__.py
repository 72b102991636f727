"""kernels stage: set similarity, adaptive margin and top-k search (see docs/architecture.md)."""
from kernels.dispatch import prepare, search, search_parts, set_scores
from kernels.set_similarity import set_similarity_reference

__all__ = ["prepare", "search", "search_parts", "set_scores", "set_similarity_reference"]
