"""seediff.prompts: one template rule, one class-word rule, one prompt builder, and the split of a long
vocabulary into prompts that fit the text encoder (real CLIP tokenizer of builtin:shapes)."""

from __future__ import annotations

import pytest

from seediff.pipeline import BUILTIN_MODELS
from seediff.prompts import (
    DEFAULT_TEMPLATE, check_classes, check_prompt, check_template, class_prompt, split_vocabulary, token_limit,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(BUILTIN_MODELS["builtin:shapes"] / "tokenizer"))


def test_template_rule():
    assert check_template("a photo of {classes}") == "a photo of {}" == DEFAULT_TEMPLATE
    assert check_template("{}") == "{}"
    for bad in ("a photo", "{} and {}", "a {x} of {}", "a { of {}", "a photo of {0}"):
        with pytest.raises(ValueError, match="exactly once and no other braces"):
            check_template(bad)


def test_class_words_and_prompt():
    assert check_classes(" dog ") == ["dog"]
    assert check_classes(["dog", "traffic light"]) == ["dog", "traffic light"]
    with pytest.raises(ValueError, match=r"duplicate class words \['dog'\]"):
        check_classes(["dog", "cat", "dog "])
    with pytest.raises(ValueError, match="non-empty strings"):
        check_classes(["dog", " "])
    with pytest.raises(ValueError, match="non-empty list"):
        check_classes([])
    assert class_prompt(["dog", "cat"]) == "a photo of a dog and a cat"
    assert class_prompt(["tree"], "a picture of {classes}") == "a picture of a tree"
    with pytest.raises(ValueError, match="no classes"):
        class_prompt([])


def test_split_vocabulary_keeps_order_and_fits(tokenizer):
    limit = token_limit(tokenizer)
    words = [f"thing number {i}" for i in range(30)]  # ~4 tokens each: far more than one prompt (32 tokens) holds
    groups = split_vocabulary(tokenizer, words)
    assert [w for g in groups for w in g] == words and len(groups) > 1
    for g in groups:
        assert len(tokenizer(class_prompt(g)).input_ids) <= limit
        check_prompt(tokenizer, class_prompt(g))
    for a, b in zip(groups, groups[1:]):  # greedy: the next group's first word did not fit the previous group
        assert len(tokenizer(class_prompt(a + b[:1])).input_ids) > limit
    assert split_vocabulary(tokenizer, ["circle", "square"]) == [["circle", "square"]]


def test_split_vocabulary_names_a_word_that_cannot_fit_alone(tokenizer):
    long_word = " ".join(["enormous"] * 80)
    with pytest.raises(ValueError, match="does not fit in a prompt even alone"):
        split_vocabulary(tokenizer, ["dog", long_word])
    with pytest.raises(ValueError, match=f"at most {token_limit(tokenizer)}"):
        check_prompt(tokenizer, class_prompt([long_word]))
