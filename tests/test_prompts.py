import pytest

from corelib.prompts import (CONTENT_FREE_QUERY, INSTRUCTION, Document, PromptError, build_prompt, document_text,
                             prompt_order, truncate_words)

DOCS = [Document("a", "Alpha text here."), Document("b", "Beta\nsecond line."), Document("c", "Gamma!")]


def test_spans_cover_exactly_the_texts(default_lm):
    tok = default_lm.tokenizer
    p = build_prompt(tok, "what is beta?", DOCS, default_lm.prefix, default_lm.suffix)
    for doc, (s, e) in zip(DOCS, p.doc_spans):
        assert tok.decode(p.input_ids[s:e]).strip() == doc.text
    s, e = p.query_span
    assert tok.decode(p.input_ids[s:e]) == INSTRUCTION + "what is beta?"
    assert e == len(p.input_ids) < p.full_length  # the chat suffix is not run
    assert p.text.startswith(default_lm.prefix) and p.text.endswith(default_lm.suffix)
    assert "[document 3] Gamma!" in p.text


def test_na_prompt_shares_the_document_prefix(default_lm):
    tok = default_lm.tokenizer
    p = build_prompt(tok, "what is beta?", DOCS, default_lm.prefix)
    na = build_prompt(tok, CONTENT_FREE_QUERY, DOCS, default_lm.prefix)
    assert p.input_ids[: p.query_span[0]] == na.input_ids[: na.query_span[0]]
    assert p.doc_spans == na.doc_spans


def test_order_and_truncation():
    assert [d.doc_id for d in prompt_order(DOCS)] == ["c", "b", "a"]
    assert [d.doc_id for d in prompt_order(DOCS, rank1_last=False)] == ["a", "b", "c"]
    assert truncate_words("one  two\nthree four", 3) == "one two three"
    assert document_text("T", "x y z", 2) == "T\nx y"
    assert document_text("", "x y z", None) == "x y z"


@pytest.mark.parametrize("query,docs,match", [
    ("", DOCS, "query is empty"),
    ("   ", DOCS, "query is empty"),
    ("q", [], "no candidate documents"),
    ("q", [Document("a", "x"), Document("a", "y")], "duplicate document ids"),
])
def test_bad_input_is_named(default_lm, query, docs, match):
    with pytest.raises(PromptError, match=match):
        build_prompt(default_lm.tokenizer, query, docs)
