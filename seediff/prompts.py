"""Prompts: the one place that turns class words into the text the model reads.

A photo is read (and a task predicted) with every class word in one prompt made from a template:
``class_prompt(["dog", "cat"], "a photo of {}")`` → 'a photo of a dog and a cat'. This module owns the template
rule, the class-word rule, the token-length check and the split of a long vocabulary into prompts that fit.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["DEFAULT_TEMPLATE", "check_template", "check_classes", "class_prompt", "check_prompt", "token_limit",
           "split_vocabulary"]

DEFAULT_TEMPLATE = "a photo of {}"


def check_template(template: str) -> str:
    """The template, ``{classes}`` read as ``{}``; ValueError unless it has exactly one ``{}`` and no other braces."""
    if not isinstance(template, str):
        raise ValueError(f"prompt template must be a string, got {type(template).__name__}")
    normal = template.replace("{classes}", "{}")  # "a photo of {classes}" reads better in an env file
    try:
        ok = normal.count("{}") == 1 and normal.format("x") == normal.replace("{}", "x")
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"prompt template must contain '{{}}' (or '{{classes}}') exactly once and no other braces, "
                         f"got {template!r}")
    return normal


def check_classes(classes: str | Sequence[str]) -> list[str]:
    """Class words as a list of distinct, non-empty strings (stripped; a bare string is one class)."""
    if isinstance(classes, str):
        classes = [classes]
    if not isinstance(classes, Sequence) or not classes:
        raise ValueError("classes must be a non-empty list of class words")
    out = []
    for c in classes:
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"class words must be non-empty strings, got {c!r}")
        out.append(c.strip())
    dup = sorted({c for c in out if out.count(c) > 1})
    if dup:
        raise ValueError(f"duplicate class words {dup}")
    return out


def class_prompt(classes: Sequence[str], template: str = DEFAULT_TEMPLATE) -> str:
    """``template`` filled with 'a x and a y …': ``class_prompt(["dog", "cat"])`` → 'a photo of a dog and a cat'."""
    words = list(classes)
    if not words:
        raise ValueError("no classes to build a prompt from")
    return check_template(template).format(" and ".join(f"a {w}" for w in words))


def token_limit(tokenizer) -> int:
    """How many tokens (with start/end) the text encoder takes."""
    return int(getattr(tokenizer, "model_max_length", 77))


def check_prompt(tokenizer, prompt: str | Sequence[str]) -> list[str]:
    """Prompts as a list; ValueError if one is empty or longer than the text encoder takes."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("no prompt given")
    limit = token_limit(tokenizer)
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt must be a non-empty string, got {p!r}")
        n = len(tokenizer(p).input_ids)
        if n > limit:
            raise ValueError(
                f"prompt has {n} tokens (with start/end) but the text encoder takes at most {limit}: "
                f"shorten it or use fewer class words: {p[:80]!r}…"
            )
    return prompts


def split_vocabulary(tokenizer, classes: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[list[str]]:
    """``classes`` cut into consecutive groups whose :func:`class_prompt` each fit the text encoder (greedy,
    order kept); ValueError naming a class whose prompt does not fit even alone."""
    words = check_classes(list(classes))
    template = check_template(template)
    limit = token_limit(tokenizer)

    def fits(group: list[str]) -> bool:
        """Whether the group's prompt fits the text encoder."""
        return len(tokenizer(class_prompt(group, template)).input_ids) <= limit

    groups: list[list[str]] = []
    for word in words:
        if groups and fits(groups[-1] + [word]):
            groups[-1].append(word)
            continue
        if not fits([word]):
            raise ValueError(f"class word {word!r} does not fit in a prompt even alone "
                             f"(the text encoder takes at most {limit} tokens)")
        groups.append([word])
    return groups
