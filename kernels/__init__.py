"""kernels stage: set similarity, adaptive margin and top-k search (see docs/architecture.md)."""
from kernels.dispatch import Part, prepare, search, search_parts, set_scores
from kernels.quantize import dequantize_sets, quantize_sets
from kernels.set_similarity import set_similarity_reference

__all__ = ["Part", "dequantize_sets", "prepare", "quantize_sets", "search", "search_parts", "set_scores",
           "set_similarity_reference"]
