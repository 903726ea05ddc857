"""Presence by default: which label-set classes a photo shows, measured side by side, every label in play.

Every scene is read as the Label Studio backend reads a task (every class in the prompt, noise mode, t=100) and
each presence rule decides which classes to segment on those same maps. Rules: none (every class), the
diffusion-classifier test (``seediff.presence``, 6 UNet calls of 2K+1 rows), attention evidence alone (zero
extra UNet rows), the leave-one-out gain alone (K+1 rows, model-agnostic threshold 0), attention + leave-one-out
(the default, ``seediff.evidence``), and an oracle that knows the truth. The logistic models are fitted on the
dev split of the shapes world (their thresholds and the region-IoU model on the dev splits of both worlds) and
reported on the test splits of the shapes world and of the shifted world (``seediff.testing.shifted``).

    python bench/presence.py --write-model --out docs/QUALITY.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from seediff.evidence import (PRESENCE_FEATURES, REGION_FEATURES, LogisticModel, PresenceModel, attention_evidence,
                              decide, fit_logistic, fit_region_model, loo_gains, loo_prompts, presence_rows,
                              region_edges, region_rows)
from seediff.testing.shapes import SHAPES

MARK_BEGIN, MARK_END = "<!-- presence: bench/presence.py -->", "<!-- /presence -->"
LEVEL = 1  # cross-attention level of the attention evidence (8² on builtin:shapes; its seed level)
SPURIOUS_BUDGET = 0.05  # threshold rule: the lowest P(present) whose spurious regions/image on both dev splits ≤ this
GRID = np.round(np.arange(0.02, 0.9, 0.02), 2)


@dataclass
class Rec:
    """One scene read with every class: maps, truth, evidence, and segmentations per kept set (cached)."""

    maps: object
    truth: dict
    evidence: np.ndarray
    gains: np.ndarray
    dc: dict | None = None
    segs: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


def capture(model, scenes, *, dc: bool, resolution: int | None = None) -> list[Rec]:
    """Read every scene with every class (the backend's read), its LOO errors and optionally the DC scores."""
    import seediff
    from seediff.presence import presence_scores
    from seediff.prompts import class_prompt

    words = list(SHAPES)
    out = []
    for s in scenes:
        # the product's read: the every-class prompt and its leave-one-out rows in one batched UNet call
        traced = seediff.read_photo(model.pipe, s.image, loo_prompts(words), mode="noise", t=100, resolution=resolution,
                                    capture=seediff.CaptureConfig(record_rows=1))  # the read row; LOO rows unrecorded
        maps = traced.maps_for(0)
        gains = loo_gains(traced.maps.meta["noise_errors"])
        scores = presence_scores(model.pipe, s.image, words) if dc else None
        out.append(Rec(maps, {w: s.class_mask(w) for w in words}, attention_evidence(maps, words, LEVEL), gains, scores))
    return out


def masks_for(model, rec: Rec, kept: tuple[str, ...]):
    """SeeDiff masks of the kept classes on the every-class maps (cached per kept set)."""
    from seediff.segment import segment

    if kept not in rec.segs:
        rec.segs[kept] = segment(rec.maps, list(kept), config=model.defaults.config("seediff"), cache=rec.cache)
    return rec.segs[kept]


def snap_effect(model, recs) -> dict:
    """Oracle-class mIoU and ms per image of segment() with the model's boundary snap and with it off."""
    import dataclasses

    from seediff.segment import segment

    cfg = model.defaults.config("seediff")
    out = {}
    for name, c in (("snap", cfg), ("no snap", dataclasses.replace(cfg, snap_iterations=0))):
        inter = {w: 0 for w in SHAPES}; union = {w: 0 for w in SHAPES}; seconds = 0.0
        for rec in recs:
            kept = [w for w in SHAPES if rec.truth[w].any()]
            t0 = time.perf_counter()
            res = segment(rec.maps, kept, config=c, cache=rec.cache)
            seconds += time.perf_counter() - t0
            for w in kept:
                inter[w] += int((res.mask(w) & rec.truth[w]).sum()); union[w] += int((res.mask(w) | rec.truth[w]).sum())
        out[name] = (float(np.mean([inter[w] / union[w] for w in SHAPES if union[w]])), 1000 * seconds / len(recs))
    return out


def metrics(model, recs, kept_sets) -> dict:
    """mIoU (dataset-level per class), present class dropped (share of images), spurious regions/image, share
    of regions with IoU ≥ 0.8, regions/image; and the per-region (IoU, mask) list for the score study."""
    inter = {c: 0 for c in SHAPES}; union = {c: 0 for c in SHAPES}
    dropped = spurious = regions = good = 0
    for rec, kept in zip(recs, kept_sets):
        out = masks_for(model, rec, kept) if kept else None
        miss = False
        for c in SHAPES:
            gt = rec.truth[c]
            pred = out.masks[out.labels.index(c)] if out is not None and c in out.labels else np.zeros_like(gt)
            inter[c] += int((pred & gt).sum()); union[c] += int((pred | gt).sum())
            if gt.any() and not pred.any():
                miss = True
            if pred.any():
                regions += 1
                good += (pred & gt).sum() / (pred | gt).sum() >= 0.8
                spurious += not gt.any()
        dropped += miss
    n = len(recs)
    return {"miou": float(np.mean([inter[c] / union[c] if union[c] else 0.0 for c in SHAPES])), "dropped": dropped / n,
            "spurious": spurious / n, "good": good / max(1, regions), "regions": regions / n}


def auc(scores, labels) -> float:
    """ROC AUC (ties count half)."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        x = np.asarray(x, float); order = np.argsort(x, kind="mergesort"); r = np.empty(len(x)); r[order] = np.arange(len(x))
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def labels_of(recs) -> np.ndarray:
    """Present (True) / absent per (scene, class), scene-major."""
    return np.array([rec.truth[c].any() for rec in recs for c in SHAPES])


def rows_of(recs) -> np.ndarray:
    """Presence feature rows per (scene, class), scene-major."""
    return np.concatenate([presence_rows(r.evidence, r.gains) for r in recs])


def kept_sets(recs, probs, threshold) -> list[tuple[str, ...]]:
    """Kept classes per scene for per-(scene, class) probabilities."""
    k = len(SHAPES)
    return [tuple(decide(SHAPES, probs[k * i:k * i + k], threshold)) for i in range(len(recs))]


def choose_threshold(model, recs, probs) -> float:
    """The lowest threshold on the grid whose dev spurious regions/image ≤ SPURIOUS_BUDGET (recall first)."""
    for thr in GRID:
        if metrics(model, recs, kept_sets(recs, probs, thr))["spurious"] <= SPURIOUS_BUDGET:
            return float(thr)
    return float(GRID[-1])


class Regions(NamedTuple):
    """Per non-empty proposed mask of a split: region feature rows, edge disagreements, true IoUs, the mask
    method's own scores."""

    rows: np.ndarray
    edges: np.ndarray
    iou: np.ndarray
    method_score: np.ndarray


def region_data(model, recs, kept, logits, level=LEVEL) -> Regions:
    """:class:`Regions` of every non-empty proposed mask."""
    X, D, y, S = [], [], [], []
    k = len(SHAPES)
    for i, (rec, ks) in enumerate(zip(recs, kept)):
        if not ks:
            continue
        out = masks_for(model, rec, ks)
        live = [j for j, m in enumerate(out.masks) if m.any()]
        if not live:
            continue
        lg = {c: float(logits[k * i + SHAPES.index(c)]) for c in SHAPES}
        X.append(region_rows(rec.maps, out.masks[live], [out.labels[j] for j in live], lg, level))
        D.append(region_edges(rec.maps.image, out.masks[live]))
        for j in live:
            m, gt = out.masks[j], rec.truth[out.labels[j]]
            y.append((m & gt).sum() / (m | gt).sum())
            S.append(float(out.scores[j]))
    return Regions(np.concatenate(X), np.concatenate(D), np.asarray(y), np.asarray(S))


def rule_lines(model, recs, kept_by_rule: dict) -> list[str]:
    """A table of rule → mIoU, present class dropped, spurious regions / image, regions IoU ≥ 0.8 on ``recs``
    (plus an every-class row first and an oracle row last)."""
    rows = {"every class (no presence)": [tuple(SHAPES)] * len(recs), **kept_by_rule,
            "oracle (diagnostic)": [tuple(c for c in SHAPES if r.truth[c].any()) for r in recs]}
    lines = ["| rule | mIoU | present class dropped (images) | spurious regions / image | regions IoU ≥ 0.8 |",
             "|---|---|---|---|---|"]
    for name, ks in rows.items():
        m = metrics(model, recs, ks)
        lines.append(f"| {name} | {m['miou']:.3f} | {m['dropped']:.1%} | {m['spurious']:.2f} | {m['good']:.1%} |")
    return lines


def large_vocabulary(model, scenes, extra: int, variants: dict) -> tuple[list[str], dict]:
    """The three shapes among ``extra`` made-up labels (a label set of 3 + extra, read in groups that fit the
    32-token encoder): a row per presence variant (name → PresenceModel, None: presence off); and the metrics."""
    import dataclasses

    import seediff

    words = list(SHAPES) + [f"label{i}" for i in range(extra)]
    lines = ["| presence | mIoU (3 shapes) | present shape dropped (images) | spurious regions / image "
             "| regions IoU ≥ 0.8 | ms / task |", "|---|---|---|---|---|---|"]
    results = {}
    for name, pm in variants.items():
        fitted = dataclasses.replace(model, defaults=dataclasses.replace(model.defaults, presence=pm))
        inter = {c: 0 for c in SHAPES}; union = {c: 0 for c in SHAPES}
        dropped = spurious = regions = good = 0
        t0 = time.perf_counter()
        for s in scenes:
            predictor = seediff.SeeDiffPredictor.from_model(fitted)
            predictor.set_image(s.image)
            out = predictor.predict(words, presence=pm is not None)
            for label, mask in zip(out.labels, out.masks):
                truth = s.class_mask(label) if label in SHAPES else np.zeros_like(mask)
                if label in SHAPES:
                    inter[label] += int((mask & truth).sum()); union[label] += int((mask | truth).sum())
                if mask.any():
                    regions += 1
                    good += (mask & truth).sum() / (mask | truth).sum() >= 0.8
                    spurious += not truth.any()
            dropped += any(not out.mask(c).any() for c in s.classes)
        ms = 1000 * (time.perf_counter() - t0) / len(scenes)
        n = len(scenes)
        miou = float(np.mean([inter[c] / union[c] if union[c] else 0.0 for c in SHAPES]))
        results[name] = {"miou": miou, "dropped": dropped / n, "spurious": spurious / n}
        lines.append(f"| {name} | {miou:.3f} | {dropped / n:.1%} | {spurious / n:.2f} | "
                     f"{good / max(1, regions):.1%} | {ms:.0f} |")
    return lines, results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dev", type=int, default=60, help="shapes-world dev scenes per object count (1 and 2)")
    p.add_argument("--test", type=int, default=80, help="shapes-world test scenes per object count (= bench/quality.py's)")
    p.add_argument("--shifted-dev", type=int, default=60)
    p.add_argument("--shifted-test", type=int, default=100)
    p.add_argument("--large", type=int, default=20, help="scenes of each split for the 100-label check (half 2-object)")
    p.add_argument("--resolution-check", type=int, default=48, help="shifted test also read at this side (0: skip)")
    p.add_argument("--closeups", type=int, default=60, help="shifted test close-ups (one large object) (0: skip)")
    p.add_argument("--write-model", action="store_true", help="write the fitted models into builtin:shapes' seediff.json")
    p.add_argument("--out", type=Path, default=None, help="docs/QUALITY.md: the presence section is replaced")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import seediff
    from seediff.pipeline import BUILTIN_MODELS
    from seediff.testing.shifted import ShiftedConfig, shifted_split, world_split

    model = seediff.load_model("builtin:shapes", device="cpu")
    t0 = time.time()
    sets = {"dev": capture(model, world_split("dev", args.dev), dc=False),
            "test": capture(model, world_split("test", args.test), dc=True),
            "shifted-dev": capture(model, shifted_split("dev", args.shifted_dev), dc=False),
            "shifted-test": capture(model, shifted_split("test", args.shifted_test), dc=True)}
    capture_s = time.time() - t0
    dev = sets["dev"]
    full = fit_logistic(rows_of(dev), labels_of(dev), PRESENCE_FEATURES)
    att = fit_logistic(rows_of(dev)[:, :2], labels_of(dev), PRESENCE_FEATURES[:2])
    peak = fit_logistic(rows_of(dev)[:, 1:], labels_of(dev), PRESENCE_FEATURES[1:])
    probs = {n: {"full": full.predict(rows_of(r)), "att": att.predict(rows_of(r)[:, :2]),
                 "peak": peak.predict(rows_of(r)[:, 1:]),
                 "loo": 1 / (1 + np.exp(-rows_of(r)[:, 2] / 0.01))} for n, r in sets.items()}
    both = dev + sets["shifted-dev"]  # the threshold must hold the spurious budget on both dev worlds together

    def threshold(key):
        return choose_threshold(model, both, np.concatenate([probs["dev"][key], probs["shifted-dev"][key]]))

    thr_full, thr_peak, thr_att = threshold("full"), threshold("peak"), threshold("att")
    k = len(SHAPES)
    rules = {
        "every class (no presence)": (lambda n: [tuple(SHAPES)] * len(sets[n]), "1"),
        "diffusion-classifier test (opt-in `drop_absent`)": (
            lambda n: [tuple(seediff.presence.present_classes(r.dc, model.defaults.presence_threshold)) for r in sets[n]]
            if sets[n][0].dc is not None else None, "1 + 6 calls × (2K+1)"),
        f"attention evidence only (P > {thr_att:.2f})": (lambda n: kept_sets(sets[n], probs[n]["att"], thr_att), "1"),
        "leave-one-out gain > 0 only (no fitted model)": (lambda n: kept_sets(sets[n], probs[n]["loo"], 0.5), "1 + (K+1)"),
        f"attention mass + peak + leave-one-out (P > {thr_full:.2f})": (
            lambda n: kept_sets(sets[n], probs[n]["full"], thr_full), "1 + (K+1)"),
        f"attention peak + leave-one-out (P > {thr_peak:.2f})": (
            lambda n: kept_sets(sets[n], probs[n]["peak"], thr_peak), "1 + (K+1)"),
        "oracle (diagnostic)": (lambda n: [tuple(c for c in SHAPES if r.truth[c].any()) for r in sets[n]], "–"),
    }
    names = {"dev": "shapes dev", "test": "shapes test", "shifted-dev": "shifted dev", "shifted-test": "shifted test"}
    lines = ["| rule | UNet rows / image | split | mIoU | present class dropped (images) | spurious regions / image "
             "| regions IoU ≥ 0.8 | regions / image |", "|---|---|---|---|---|---|---|---|"]
    for rule, (fn, cost) in rules.items():
        for n in ("test", "shifted-test", "dev"):
            ks = fn(n)
            if ks is None:
                continue
            m = metrics(model, sets[n], ks)
            lines.append(f"| {rule} | {cost} | {names[n]} | {m['miou']:.3f} | {m['dropped']:.1%} | {m['spurious']:.2f} "
                         f"| {m['good']:.1%} | {m['regions']:.2f} |")
    auc_lines = ["| score | split | circle | square | triangle | pooled |", "|---|---|---|---|---|---|"]
    for label, key in (("attention mass + peak + leave-one-out", "full"), ("attention peak + leave-one-out", "peak"),
                       ("attention only", "att"),
                       ("leave-one-out gain only", "loo"), ("diffusion-classifier test", "dc")):
        for n in ("test", "shifted-test"):
            y = labels_of(sets[n])
            if key == "dc":
                s = np.array([r.dc[c] for r in sets[n] for c in SHAPES])
            else:
                s = probs[n][key] if key != "loo" else rows_of(sets[n])[:, 2]
            per = [auc(s[i::k], y[i::k]) for i in range(k)]
            auc_lines.append(f"| {label} | {names[n]} | " + " | ".join(f"{v:.3f}" for v in per) + f" | {auc(s, y):.3f} |")
    m0 = float(labels_of(dev).reshape(-1, k).sum(1).mean())
    cols = {"full": slice(0, 3), "peak": slice(1, 3)}
    fits = {"full": (full, thr_full), "peak": (peak, thr_peak)}

    def region_model(key):
        """Region-IoU model fitted on the dev regions of both worlds under rule ``key`` (and its data per split)."""
        fit, thr = fits[key]
        reg = {n: region_data(model, sets[n], kept_sets(sets[n], probs[n][key], thr), fit.logit(rows_of(r)[:, cols[key]]))
               for n, r in sets.items()}
        dev_regions = Regions(*(np.concatenate(v) for v in zip(reg["dev"], reg["shifted-dev"])))
        return fit_region_model(dev_regions.rows, dev_regions.edges, dev_regions.iou), reg, dev_regions

    regions = {key: region_model(key) for key in fits}
    about = (f"fitted by bench/presence.py on the shapes-world dev split ({2 * args.dev} scenes; region model also on "
             f"{args.shifted_dev} shifted dev scenes)")
    variants = {  # name → (3-label rule key, presence model)
        "mass + peak + leave-one-out (issue 13's default)": ("full", PresenceModel(LEVEL, thr_full, full, regions["full"][0], True, about)),
        "mass + peak + leave-one-out, prior for N labels": ("full", PresenceModel(LEVEL, thr_full, full, regions["full"][0], True, about, k, m0)),
        "peak + leave-one-out": ("peak", PresenceModel(LEVEL, thr_peak, peak, regions["peak"][0], True, about)),
        "peak + leave-one-out, prior for N labels": ("peak", PresenceModel(LEVEL, thr_peak, peak, regions["peak"][0], True, about, k, m0)),
    }
    dev3 = {(key, n): metrics(model, sets[n], kept_sets(sets[n], probs[n][key], fits[key][1]))["miou"]
            for key in fits for n in ("dev", "shifted-dev")}
    diagnostics = []
    chosen = "peak + leave-one-out, prior for N labels"
    if args.large:
        half = args.large // 2
        table = {name: pm for name, (_, pm) in variants.items()} | {"off": None}
        dev_lines, dev_res = large_vocabulary(model, world_split("dev", half), 97, table)
        test_lines, _ = large_vocabulary(model, world_split("test", half), 97, table)
        ok = [name for name, (key, _) in variants.items()
              if all(dev3[key, n] >= max(dev3[o, n] for o in fits) - 0.02 for n in ("dev", "shifted-dev"))]
        # ties go to the later variant (the prior for N labels, then fewer features): Bayes' shift is what a large
        # label set needs when dev cannot tell the variants apart
        chosen = max(reversed(ok), key=lambda n: dev_res[n]["miou"] - dev_res[n]["spurious"] / 10)
        diagnostics += ["### A label set of 100 (3 shapes + 97 made-up labels)", "",
                        f"{2 * half} shapes-world scenes per split ({half} one-object, {half} two-object) asked for 100 "
                        "labels: the label set is split into prompts that fit the 32-token encoder (33 prompts; the builtin "
                        "tokenizer spells made-up words letter by letter), all read in one batched UNet call with their "
                        "leave-one-out rows. Every region given to a made-up label is spurious.", "",
                        "Why made-up labels were kept (issue 13's model, 100-label dev reads): their attention *mass* is as "
                        "high as a present shape's (sub-tokens that draw attention everywhere: mass is a property of the "
                        "word's tokens, not evidence of its object), while their attention *peak* and leave-one-out gain "
                        "are those of an absent word; and the model's bias holds the 3-class dev prior (1.5 of 3 present), "
                        "so 97 absent labels each at that prior keep a few by chance. Variants: drop the mass feature "
                        "(refit on the same dev rows), and shift each logit by the prior for a label set of N, "
                        f"log(m0/(N−m0)) − log(m0/(K0−m0)) with m0 = {m0:.2f} of K0 = {k} (N = 100: "
                        f"{np.log(m0 / (100 - m0)) - np.log(m0 / (k - m0)):.2f}; 0 for N ≤ 3, so 3-label results are unchanged by it).",
                        "", "Dev (choice: the best dev 100-label mIoU − spurious/10 among variants whose 3-label mIoU on both "
                        "dev splits is within 0.02 of the best, ties to the prior for N labels, "
                        f"{', '.join(f'{key} {names[n]} {v:.3f}' for (key, n), v in dev3.items())}): **{chosen}**", "",
                        *dev_lines, "", "Test:", "", *test_lines, ""]
    key, presence_model = variants[chosen]
    region, reg, dev_regions = regions[key]
    est = {n: region.predict(reg[n].rows, reg[n].edges) for n in sets}
    pooled_e = np.concatenate([est["test"], est["shifted-test"]]); pooled_y = np.concatenate([reg["test"].iou, reg["shifted-test"].iou])
    sp = {n: spearman(est[n], reg[n].iou) for n in sets}
    one = fit_logistic(dev_regions.rows, dev_regions.iou, REGION_FEATURES)
    scorers = {"the mask method's own score (mean probability inside)": lambda n: reg[n].method_score,
               "one logistic IoU model over the object features (the previous release)": lambda n: one.predict(reg[n].rows),
               "object model → doubt + edge disagreement (default)": lambda n: est[n]}
    score_lines = ["| region score | Spearman, shapes test | Spearman, shifted test | Spearman, pooled "
                   "| AUC right (IoU ≥ 0.5) vs wrong, pooled |", "|---|---|---|---|---|"]
    for label, f in scorers.items():
        e = {n: f(n) for n in ("test", "shifted-test")}
        pe = np.concatenate([e["test"], e["shifted-test"]])
        score_lines.append(f"| {label} | {spearman(e['test'], reg['test'].iou):.2f} | "
                           f"{spearman(e['shifted-test'], reg['shifted-test'].iou):.2f} | {spearman(pe, pooled_y):.2f} | "
                           f"{auc(pe, pooled_y >= 0.5):.3f} |")
    cal = ["| estimated IoU | regions | mean estimate | mean true IoU | share IoU ≥ 0.8 |", "|---|---|---|---|---|"]
    bins = [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0001]
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (pooled_e >= lo) & (pooled_e < hi)
        if sel.any():
            cal.append(f"| [{lo:.1f}, {min(hi, 1):.1f}{']' if hi > 1 else ')'} | {sel.sum()} | {pooled_e[sel].mean():.2f} | "
                       f"{pooled_y[sel].mean():.2f} | {(pooled_y[sel] >= 0.8).mean():.0%} |")
    fit_c, thr_c = fits[key]
    if args.resolution_check:
        res = args.resolution_check
        recs = capture(model, shifted_split("test", args.shifted_test), dc=False, resolution=res)
        p48 = fit_c.predict(rows_of(recs)[:, cols[key]])
        diagnostics += [f"### Shifted test read at {res} px instead of the model's native 32 px", "",
                        "Where the shifted world's gap comes from: the same scenes read at a larger input size "
                        f"(`read_photo(resolution={res})`; not the default).", "",
                        *rule_lines(model, recs, {f"default rule (fitted at the native size, P > {thr_c:.2f})":
                                                  kept_sets(recs, p48, thr_c)}), ""]
    if args.closeups:
        close = ShiftedConfig(radius=(0.24, 0.36), objects=(1, 1))
        diagnostics += ["### Close-ups: one large object", "",
                        f"{args.closeups} shifted test scenes of one object whose radius is 24–36 % of the side "
                        "(`ShiftedConfig(radius=(0.24, 0.36), objects=(1, 1))`; the shifted set's is 10–24 %, the "
                        "shapes training world's at most 27 %), every label in play. The masks are right once the "
                        "classes are (oracle row); what fails is telling the classes of a shape larger than any the "
                        "bundled model was trained on, so the presence rule keeps other labels too. A limit of the "
                        "bundled test model's training world as far as we can tell (real Stable Diffusion "
                        "checkpoints, trained on photos that include close-ups, are not measured here).",
                        ""]
        recs = capture(model, shifted_split("test", args.closeups, close), dc=False)
        pc = fit_c.predict(rows_of(recs)[:, cols[key]])
        diagnostics += [*rule_lines(model, recs, {f"default rule (P > {thr_c:.2f})": kept_sets(recs, pc, thr_c)}), ""]
    cfg = model.defaults.config("seediff")
    if cfg.snap_iterations:
        snaps = {n: snap_effect(model, sets[n]) for n in ("shifted-dev", "shifted-test")}
        diagnostics += ["### Boundary snap (the model's `snap_iterations`)", "",
                        f"The shifted world's {sets['shifted-test'][0].truth['circle'].shape[0]}-px scenes are read at "
                        f"the model's size; with oracle classes, segment() with the model's snap ({cfg.snap_iterations} "
                        f"PAMR rounds at dilations {cfg.snap_dilations} on the photo) and with it off:", "",
                        "| split | mIoU, no snap | mIoU, snap | segment() ms / image, no snap | with snap |",
                        "|---|---|---|---|---|"]
        for n, r in snaps.items():
            diagnostics.append(f"| {names[n]} | {r['no snap'][0]:.3f} | {r['snap'][0]:.3f} | {r['no snap'][1]:.1f} "
                               f"| {r['snap'][1]:.1f} |")
        diagnostics.append("")
    if args.write_model:
        f = BUILTIN_MODELS["builtin:shapes"] / "seediff.json"
        data = json.loads(f.read_text())
        data["presence"] = presence_model.to_dict()
        f.write_text(json.dumps(data, indent=1) + "\n")
    command = "python bench/presence.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = [MARK_BEGIN, "## Presence by default (every label of the config in play)", "",
            f"Generated by `{command}` ({time.time() - t0:.0f} s, captures {capture_s:.0f} s; "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}).", "",
            f"Splits: shapes world dev = {args.dev}+{args.dev} scenes (1-/2-object, seeds 400000+/450000+; all fitting and "
            f"the threshold), test = {args.test}+{args.test} (bench/quality.py's benchmark seeds 100000+/200000+); shifted "
            f"world (`seediff.testing.shifted`, another generator: 128 px, 1–3 distinct rotated shapes, PIL-drawn, in "
            f"colours outside the six the shapes world names (white, orange, pink, brown, teal, black; the bundled model "
            f"saw such colours only unnamed, in its rich training world), on coloured plain/striped/noisy backgrounds) dev {args.shifted_dev} (seeds 700000+), test "
            f"{args.shifted_test} (800000+). Every scene is read once with all three classes (`a photo of a circle and a "
            f"square and a triangle`, noise t=100); each rule decides which classes to segment on those maps. Kept: "
            f"P(present) above the threshold, and always the best class. Threshold: the lowest P whose spurious "
            f"regions/image on both dev splits together ≤ {SPURIOUS_BUDGET} (recall first; chosen on dev by two-fold "
            f"cross-validation over the shifted dev scenes, against the shapes dev split alone). Present class dropped: share of images where a class that "
            "is there gets no region (by the rule or by an empty mask). UNet rows: prompt rows the UNet runs per image "
            "(the read is 1; K = 3 classes).", "", *lines, "",
            "ROC AUC of the presence score, present vs absent (per class, pooled):", "", *auc_lines, "",
            f"Default presence model (`seediff.json` → `presence`, chosen below on dev: {chosen}): "
            f"{ {f: round(float(v), 2) for f, v in zip(fit_c.features, fit_c.weights)} } "
            f"on standardised features, attention at level {LEVEL}, P > {thr_c:.2f}.", "",
            *diagnostics,
            "### Region scores that estimate IoU", "",
            "Each proposed region's score estimates its IoU in two steps, both fitted on the dev regions of both worlds "
            "under the default rule. First, is it the labelled object at all: a logistic model on right (IoU ≥ 0.5) / "
            "wrong regions over the class's presence logit (clipped at ±8), the share of the word's cross-attention "
            "inside the region, its area, the number of classes kept, the pieces it falls into and its outline against "
            "a disc's of the same area. Then, how well it follows the object: the region's edge disagreement on the "
            "photo (the share of its boundary band whose colour sides with the other side: pixels just outside nearer "
            "the region's colour than the local background's, pixels just inside nearer the background's). The IoU "
            "estimate is a logistic model of the IoU over the first model's log-odds capped at 0 (only doubt counts) "
            "and the edge disagreement. Spearman correlation with the true IoU: "
            + ", ".join(f"{names[n]} {sp[n]:.2f}" for n in ("test", "shifted-test")) + f", both test splits pooled "
            f"{spearman(pooled_e, pooled_y):.2f} ({len(pooled_y)} regions). Most kept regions have IoU ≈ 1, so a "
            "score that only told right from wrong (IoU ≥ 0.5) and nothing finer would reach "
            f"{spearman((pooled_y >= 0.5).astype(float), pooled_y):.2f} on the same regions; the edges rank the "
            "right ones among themselves. Alternatives on the same test regions (each fitted on the same dev regions):",
            "", *score_lines, "", "Calibration (both test splits):", "", *cal,
            MARK_END]
    report = "\n".join(text) + "\n"
    print(report)
    if args.out:
        old = args.out.read_text() if args.out.is_file() else ""
        if MARK_BEGIN in old:
            head, rest = old.split(MARK_BEGIN, 1)
            old = head + rest.split(MARK_END, 1)[1].lstrip("\n")
        args.out.write_text(old.rstrip("\n") + "\n\n" + report)


if __name__ == "__main__":
    main()
