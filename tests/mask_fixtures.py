"""Hand-made AttentionMaps for the mask tests: block-structured self-attention and chosen cross-attention.

Grid: latent 16×16, so level 0 = 16², level 1 = 8², level 2 = 4² (as SD 1.5's 64/32/16 at a quarter scale).
Self-attention at every level: each row attends uniformly to its own block (so cos = 1 within a block, 0
across). Cross-attention: a word's map is placed on its token; a filler token takes the rest of each
pixel's mass over the prompt's real tokens, so after special tokens are excluded the word's map is exactly
the map given.
"""

from __future__ import annotations

import numpy as np
import torch

from seediff.capture import AttentionMaps

VOCAB = {"a": 10, "photo": 11, "of": 12, "dog": 13, "cat": 14, "and": 15, "grass": 16, "car": 17}
BOS, EOS, PAD = 1, 2, 0
LATENT = (16, 16)


def tokenize(text: str) -> list[int]:
    """Whitespace tokenizer over VOCAB; unknown words get id 99 (never in a prompt)."""
    return [VOCAB.get(w, 99) for w in text.lower().split()]


def level_hw(level: int) -> tuple[int, int]:
    """Grid of a level for the 16×16 latent."""
    return LATENT[0] >> level, LATENT[1] >> level


def block_labels(hw: tuple[int, int], split: float | tuple[float, ...] = 0.5) -> torch.Tensor:
    """int ``[h, w]`` column blocks: 0 left of ``split``·w (block A), 1 after it (block B); with several
    splits, block k lies between the k-th and (k+1)-th."""
    h, w = hw
    cols = torch.arange(w)[None].expand(h, w)
    splits = (split,) if isinstance(split, (int, float)) else split
    return sum((cols >= int(round(s * w))).long() for s in splits)


def block_self_attention(labels: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` row-stochastic attention: each cell attends uniformly to the cells of its own block."""
    flat = labels.reshape(-1)
    same = (flat[:, None] == flat[None, :]).float()
    return same / same.sum(1, keepdim=True)


def make_maps(
    word_maps: dict[str, dict[int, torch.Tensor]],
    prompt: str = "a photo of a dog and a cat",
    self_levels: tuple[int, ...] = (0, 1, 2),
    split: float | tuple[float, ...] = 0.5,
    original_hw: tuple[int, int] | None = (16, 16),
    image: np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
    layers_per_level: int = 2,
) -> AttentionMaps:
    """AttentionMaps whose word ``w`` has cross-attention ``word_maps[w][level]`` (``[h, w]`` in [0, 1]).

    Every layer at a level gets the same map (so per-layer normalisation is exact); self-attention is the
    block structure at each of ``self_levels``.
    """
    ids = [BOS] + tokenize(prompt) + [EOS] + [PAD] * 3
    filler = ids.index(VOCAB["photo"])
    levels, cross, self_attn = {}, {}, {}
    cross_levels = sorted({lv for m in word_maps.values() for lv in m})
    for lv in cross_levels:
        h, w = level_hw(lv)
        probs = torch.zeros(h * w, len(ids))
        used = torch.zeros(h * w)
        for word, per_level in word_maps.items():
            if lv in per_level:
                m = per_level[lv].float().reshape(-1)
                probs[:, ids.index(VOCAB[word])] = m * 0.5  # 0.5: leave room for several words
                used += m * 0.5
        probs[:, filler] = 1.0 - used
        probs[:, 0] += 0.3  # special tokens soak mass; excluded by cross_maps
        for i in range(layers_per_level):
            name = f"cross.level{lv}.{i}"
            levels[name] = lv
            cross[name] = probs[None].to(dtype)
    for lv in self_levels:
        name = f"self.level{lv}"
        levels[name] = lv
        self_attn[name] = block_self_attention(block_labels(level_hw(lv), split))[None].to(dtype)
    return AttentionMaps(
        levels=levels, cross=cross, self_attn=self_attn, latent_hw=LATENT, token_ids=[ids],
        tokenize=tokenize, special_ids=frozenset({BOS, EOS, PAD}), original_hw=original_hw, image=image,
    )


def left_block_map(level: int, high: float = 0.9, low: float = 0.05, seed: int = 0) -> torch.Tensor:
    """A cross-attention map high (with a little variation) on block A, low on block B."""
    g = torch.Generator().manual_seed(seed + level)
    hw = level_hw(level)
    lab = block_labels(hw)
    jitter = torch.rand(hw, generator=g) * 0.1
    return torch.where(lab == 0, high - jitter, low + jitter * 0.5)


def blocks_map(level: int, blocks: tuple[int, ...], split, high: float = 0.9, low: float = 0.05, seed: int = 0) -> torch.Tensor:
    """A cross-attention map high on the given blocks of ``block_labels(…, split)``, low elsewhere."""
    g = torch.Generator().manual_seed(seed + level)
    hw = level_hw(level)
    on = torch.isin(block_labels(hw, split), torch.tensor(blocks))
    jitter = torch.rand(hw, generator=g) * 0.1
    return torch.where(on, high - jitter, low + jitter * 0.5)


def right_block_map(level: int, seed: int = 1) -> torch.Tensor:
    """Mirror of :func:`left_block_map`: high on block B."""
    return left_block_map(level, seed=seed).flip(-1)


def two_colour_image(hw: tuple[int, int], split: float | tuple[float, ...] = 0.5) -> np.ndarray:
    """RGB uint8: block A red, block B blue, with a little noise (the sharp colour edge PAMR should keep)."""
    lab = block_labels(hw, split).numpy()
    rng = np.random.default_rng(0)
    img = np.where(lab[..., None] == 0, np.array([200, 40, 40]), np.array([40, 60, 200])).astype(np.float64)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def scene_maps(seed: int = 0, size: int = 128, latent: int = 32, tau: float = 0.01) -> tuple[AttentionMaps, np.ndarray]:
    """A disc-with-a-leg object on a shaded background, and maps that imitate SD's on it.

    Self-attention at levels 0-2: softmax over −‖c_i − c_j‖²/τ of area-averaged colours (attends to look-alike
    pixels anywhere, as SD's does); cross-attention at levels 0-3: the true mask area-averaged, blurred and
    noised (coarse, like SD's). Returns (maps with the image attached, bool true mask ``[size, size]``).
    """
    import cv2

    rng = np.random.default_rng(seed)
    gt = np.zeros((size, size), np.uint8)
    cv2.circle(gt, (int(size * 0.4), int(size * 0.55)), int(size * 0.22), 1, -1)
    cv2.rectangle(gt, (int(size * 0.38), int(size * 0.55)), (int(size * 0.44), int(size * 0.95)), 1, -1)
    img = np.where(gt[..., None] > 0, [200, 80, 60], [90, 150, 210]).astype(np.float64)
    img += np.linspace(0, 30, size)[:, None, None] + rng.normal(0, 6, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    ids = [BOS] + tokenize("a photo of a dog") + [EOS, PAD, PAD]
    levels, cross, self_attn = {}, {}, {}
    for lv in (0, 1, 2, 3):
        h = latent >> lv
        colours = torch.from_numpy(cv2.resize(img.astype(np.float32) / 255, (h, h), interpolation=cv2.INTER_AREA))
        colours = colours.reshape(-1, 3)
        if lv <= 2:
            levels[f"self{lv}"] = lv
            self_attn[f"self{lv}"] = torch.softmax(-torch.cdist(colours, colours) ** 2 / tau, 1)[None]
        g = cv2.resize(gt.astype(np.float32), (h, h), interpolation=cv2.INTER_AREA)
        g = np.clip(cv2.GaussianBlur(g, (0, 0), max(0.6, h / 10)) + rng.normal(0, 0.1, g.shape), 0, None) + 0.05
        m = torch.from_numpy(g.reshape(-1)).float()
        m = m / m.max() * 0.5
        probs = torch.zeros(h * h, len(ids))
        probs[:, ids.index(VOCAB["dog"])] = m
        probs[:, ids.index(VOCAB["photo"])] = 1 - m
        levels[f"cross{lv}"] = lv
        cross[f"cross{lv}"] = probs[None]
    maps = AttentionMaps(
        levels=levels, cross=cross, self_attn=self_attn, latent_hw=(latent, latent), token_ids=[ids],
        tokenize=tokenize, special_ids=frozenset({BOS, EOS, PAD}), original_hw=(size, size), image=img,
    )
    return maps, gt > 0
