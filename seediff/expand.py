"""Expand: spread seeds through self-attention (SeeDiff's region growing), vectorised over seeds and classes.

Reference (SeeDiff): score of pixel i = Σ_{s∈S} cos(A_i, A_s). With Â the row-L2-normalised attention this is
Â · (Σ_s Â_s): one masked row sum and one mat-vec per seed group (a mat-mat for several groups), never a loop
over seeds. The follow-up's variant averages the seeds' attention rows: (1/|S|) Σ_s A_s.
"""

from __future__ import annotations

import torch

from .seeds import minmax, rescale

__all__ = ["EXPANSIONS", "row_normalize", "summed_cosine", "mean_rows", "expand", "gate", "gate_rows"]

EXPANSIONS = ("cosine", "mean")


def row_normalize(attn: torch.Tensor) -> torch.Tensor:
    """Rows of ``[N, N]`` attention scaled to unit L2 norm, in fp32 (zero rows stay zero)."""
    if attn.ndim != 2 or attn.shape[0] != attn.shape[1]:
        raise ValueError(f"attention must be square [N, N], got shape {tuple(attn.shape)}")
    a = attn.float()
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _seed_matrix(seeds: torch.Tensor, n: int) -> torch.Tensor:
    """Seed indicators as fp32 ``[G, N]`` from bool/float ``[N]``, ``[G, N]`` or ``[G, h, w]``."""
    s = seeds.float()
    if s.ndim == 1:
        s = s[None]
    s = s.reshape(s.shape[0], -1)
    if s.shape[1] != n:
        raise ValueError(f"seeds cover {s.shape[1]} cells but the attention has {n} rows")
    return s


def summed_cosine(attn_hat: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """``[G, N]``: Σ_{s∈S_g} cos(A_i, A_s) for each seed group g, given row-normalised ``attn_hat`` ``[N, N]``."""
    s = _seed_matrix(seeds, attn_hat.shape[0]).to(attn_hat.device)
    return (s @ attn_hat) @ attn_hat.T  # (Σ_s Â_s) · Â_iᵀ for every i


def mean_rows(attn: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """``[G, N]``: mean of the seeds' attention rows (where the seeds look), per seed group."""
    s = _seed_matrix(seeds, attn.shape[0]).to(attn.device)
    return (s @ attn.float()) / s.sum(1, keepdim=True).clamp_min(1.0)


def expand(
    attn: torch.Tensor,
    seeds: torch.Tensor,
    method: str = "cosine",
    *,
    attn_hat: torch.Tensor | None = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Expanded maps ``[G, N]`` for seed groups ``[G, N]``, each min-max normalised (a flat group → zeros).

    method: 'cosine' (reference: summed cosine to the seed rows) or 'mean' (follow-up: mean seed row).
    ``attn_hat``: the row-normalised attention if already computed (it is shared by every class).
    """
    if method not in EXPANSIONS:
        raise ValueError(f"expansion must be one of {EXPANSIONS}, got {method!r}")
    if method == "cosine":
        raw = summed_cosine(row_normalize(attn) if attn_hat is None else attn_hat, seeds)
    else:
        raw = mean_rows(attn, seeds)
    return minmax(raw, eps, dims=(1,))


def gate(prob: torch.Tensor, similarity: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """SeeDiff's background gate: norm((1 − norm(V)) ⊙ norm(P)) — pixels like the background lose weight."""
    return gate_rows(prob[None], similarity[None], eps)[0]


def gate_rows(prob: torch.Tensor, similarity: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """:func:`gate` of each pair ``prob[k]``, ``similarity[k]`` of ``[K, ...]`` maps at once."""
    dims = tuple(range(1, prob.ndim))
    return rescale((1.0 - minmax(similarity, eps, dims)) * rescale(prob, eps, dims), eps, dims)
