"""Attention maps: what :func:`seediff.capture.trace` recorded, and the per-word and per-level queries on it.

Levels: level ``k`` is the latent downsampled ``k`` times (SD 1.5 at 512 px: 0 → 64², 1 → 32², 2 → 16²,
3 → 8²); :func:`level_hw` gives a level's grid from the latent's (h, w), so non-square images work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["AttentionMaps", "level_hw"]


def level_hw(latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """(h, w) of a UNet level: each stride-2 downsampler maps n → ceil(n / 2)."""
    h, w = latent_hw
    for _ in range(level):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


@dataclass
class AttentionMaps:
    """Attention recorded during one pipeline call: per image, per layer, averaged over heads and steps.

    cross[name]: ``[B, h·w, T]`` cross-attention probabilities (T = text tokens, 77 for CLIP).
    self_attn[name]: ``[B, h·w, h·w]`` self-attention probabilities.
    Filled when the ``trace`` block exits; ``image``/``original_hw`` are set by the photo/generate modes.
    """

    levels: dict[str, int] = field(default_factory=dict)
    cross: dict[str, torch.Tensor] = field(default_factory=dict)
    self_attn: dict[str, torch.Tensor] = field(default_factory=dict)
    latent_hw: tuple[int, int] | None = None
    token_ids: list[list[int]] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)
    mode: str = "generate"
    image: object | None = None  # RGB uint8 numpy array at original size, when known (for refinement)
    original_hw: tuple[int, int] | None = None
    meta: dict = field(default_factory=dict)
    tokenize: Callable[[str], list[int]] | None = field(default=None, repr=False)
    decode: Callable[[list[int]], str] | None = field(default=None, repr=False)
    special_ids: frozenset[int] = frozenset()

    # ---- shape facts ---------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Number of (conditional) images recorded."""
        any_map = next(iter([*self.cross.values(), *self.self_attn.values()]), None)
        if any_map is None:
            raise RuntimeError("no attention was recorded: no UNet step fell inside the capture's t_window")
        return any_map.shape[0]

    def level_hw(self, level: int) -> tuple[int, int]:
        """(h, w) of a level's attention grid."""
        if self.latent_hw is None:
            raise RuntimeError("no attention was recorded")
        return level_hw(self.latent_hw, level)

    def available_levels(self, kind: str) -> list[int]:
        """Levels that have recorded layers of ``kind`` ('cross' or 'self'), finest first."""
        store = self._kind(kind)
        return sorted({self.levels[n] for n in store})

    def _kind(self, kind: str) -> dict[str, torch.Tensor]:
        if kind == "cross":
            return self.cross
        if kind == "self":
            return self.self_attn
        raise ValueError(f"kind must be 'cross' or 'self', got {kind!r}")

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded maps."""
        return sum(t.numel() * t.element_size() for t in [*self.cross.values(), *self.self_attn.values()])

    # ---- words ---------------------------------------------------------------------------------------
    def word_token_indices(self, word: str, batch: int = 0) -> list[int]:
        """Positions of ``word``'s tokens in the prompt (all sub-tokens, every occurrence).

        Raises ValueError if the word is not in the prompt.
        """
        if self.tokenize is None:
            raise RuntimeError("these maps have no tokenizer attached; cannot look up words")
        if batch >= len(self.token_ids):
            raise RuntimeError(
                "the prompt's tokens were not recorded (the text encoder did not run inside trace, e.g. "
                "prompt_embeds were passed); run the pipeline with a text prompt inside the trace block"
            )
        word_ids = self.tokenize(word.strip())
        if not word_ids:
            raise ValueError(f"empty class word {word!r}")
        prompt = self.token_ids[batch]
        n = len(word_ids)
        hits = [i for i in range(len(prompt) - n + 1) if prompt[i : i + n] == word_ids]
        if not hits:
            text = self.decode(self.prompt_tokens(batch)) if self.decode else self.prompt_tokens(batch)
            raise ValueError(f"word {word!r} is not in the prompt {text!r}")
        return sorted({i + k for i in hits for k in range(n)})

    def prompt_tokens(self, batch: int = 0) -> list[int]:
        """Token ids of the prompt without special/padding tokens."""
        return [t for t in self.token_ids[batch] if t not in self.special_ids]

    def has_word(self, word: str, batch: int = 0) -> bool:
        """Whether ``word`` occurs in the prompt."""
        try:
            self.word_token_indices(word, batch)
        except ValueError:
            return False
        return True

    # ---- queries -------------------------------------------------------------------------------------
    def cross_maps(self, word: str, level: int, batch: int = 0, exclude_special: bool = True) -> torch.Tensor:
        """Per-layer cross-attention maps of ``word`` at ``level``: ``[L, h, w]`` fp32.

        Sub-tokens are averaged. With ``exclude_special`` the attention is renormalised over the prompt's
        real tokens (start, end and padding tokens soak up most of the mass and carry no location).
        """
        idx = self.word_token_indices(word, batch)
        names = [n for n in self.cross if self.levels[n] == level]
        if not names:
            raise ValueError(f"no cross-attention recorded at level {level}; available: {self.available_levels('cross')}")
        h, w = self.level_hw(level)
        keep = torch.tensor([t not in self.special_ids for t in self.token_ids[batch]])
        out = []
        for n in names:
            a = self.cross[n][batch].float()  # [hw, T]; normalise in fp32 whatever the stored dtype
            if exclude_special:
                a = a / a[:, keep[: a.shape[1]]].sum(-1, keepdim=True).clamp_min(1e-12)
            out.append(a[:, idx].mean(-1).view(h, w))
        return torch.stack(out)

    def self_attention(self, level: int, batch: int = 0, layer: str | None = None) -> torch.Tensor:
        """Self-attention ``[h·w, h·w]`` at ``level`` (the first recorded layer there unless ``layer``)."""
        if layer is None:
            names = [n for n in self.self_attn if self.levels[n] == level]
            if not names:
                raise ValueError(f"no self-attention recorded at level {level}; available: {self.available_levels('self')}")
            layer = names[0]
        elif layer not in self.self_attn:
            raise ValueError(f"self-attention layer {layer!r} was not recorded; recorded: {sorted(self.self_attn)}")
        return self.self_attn[layer][batch]

    def select(self, batch: int) -> "AttentionMaps":
        """The maps of one image of a batch, as a batch of one."""
        return AttentionMaps(
            levels=self.levels,
            cross={n: t[batch : batch + 1] for n, t in self.cross.items()},
            self_attn={n: t[batch : batch + 1] for n, t in self.self_attn.items()},
            latent_hw=self.latent_hw, token_ids=[self.token_ids[batch]], timesteps=self.timesteps,
            mode=self.mode, image=None, original_hw=self.original_hw, meta=dict(self.meta),
            tokenize=self.tokenize, decode=self.decode, special_ids=self.special_ids,
        )

    def to(self, device: str | torch.device) -> "AttentionMaps":
        """Move the recorded tensors to ``device`` (in place); returns self."""
        self.cross = {n: t.to(device) for n, t in self.cross.items()}
        self.self_attn = {n: t.to(device) for n, t in self.self_attn.items()}
        return self
