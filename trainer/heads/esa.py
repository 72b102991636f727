"""ESA set head: K slots that compete for an item's token features (slot attention).

Each modality has its own head on top of its CLIP tower. K learned slot queries attend
over the tower's tokens (image: the patch tokens; text: the tokens up to end-of-text)
with the softmax taken over *slots*, so slots compete for tokens and specialise (after
Locatello et al., 2020, with learned rather than sampled initial slots, so the head is
deterministic and traces to ONNX). A few refinement rounds, a projection to the joint
space, then L2 normalisation: the item's set is [global; slot_1..slot_K], [K+1, D].
The forward has no training-only branch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SlotSetHead(nn.Module):
    def __init__(self, dim: int, slots: int = 4, iterations: int = 3):
        super().__init__()
        if slots < 1 or iterations < 1:
            raise ValueError(f"slots and iterations must be >= 1, got {slots} and {iterations}")
        self.iterations, self.scale = iterations, dim ** -0.5
        self.slots = nn.Parameter(torch.randn(slots, dim) * dim ** -0.5)
        self.norm_tokens, self.norm_slots, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        # GRU update written out (not nn.GRUCell) so the exported graph is plain MatMul/Sigmoid/Tanh.
        self.gru_x, self.gru_h = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.proj = nn.Linear(dim, dim)

    def _gru(self, x: Tensor, h: Tensor) -> Tensor:
        xr, xz, xn = self.gru_x(x).chunk(3, dim=-1)
        hr, hz, hn = self.gru_h(h).chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        return (1 - z) * torch.tanh(xn + r * hn) + z * h

    def forward(self, global_feat: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        """global [B, D], tokens [B, L, D], mask [B, L] (True = a real token) -> set [B, K+1, D]."""
        tokens = self.norm_tokens(tokens)
        k, v = self.to_k(tokens), self.to_v(tokens)
        keep = mask.unsqueeze(-1).to(tokens.dtype)  # [B, L, 1]
        slots = self.slots.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for _ in range(self.iterations):
            q = self.to_q(self.norm_slots(slots))
            attn = (torch.einsum("bld,bkd->blk", k, q) * self.scale).softmax(dim=-1) * keep
            # each slot takes the weighted mean of the tokens it won (eps: a slot may win none)
            attn = attn / (attn.sum(dim=1, keepdim=True) + 1e-6)
            slots = self._gru(torch.einsum("blk,bld->bkd", attn, v), slots)
            slots = slots + self.mlp(self.norm_mlp(slots))
        out = torch.cat([global_feat.unsqueeze(1), self.proj(slots)], dim=1)
        return F.normalize(out, dim=-1)
