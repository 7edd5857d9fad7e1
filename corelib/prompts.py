"""The ICR prompt: N documents, then the query, in one chat turn; spans from offset mappings."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import UsageError

HEADER = "Here are some paragraphs:\n\n"
INSTRUCTION = "Please find information that are relevant to the following query in the paragraphs above.\n\nQuery: "
CONTENT_FREE_QUERY = "N/A"


class PromptError(UsageError):
    """The query or documents cannot form a valid prompt."""


DEFAULT_WORDS = 100  # words per document: the one default of detection, the study and ``Reranker``


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str  # the text put in the prompt (title + "\n" + body, already truncated)
    # what the caller gave with it (a dict's other fields, or the original text): carried to the results, never
    # part of a record's key
    metadata: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass
class Prompt:
    """A tokenised prompt with the token spans the scores are read from.

    Spans are half-open ``[start, end)`` token indices. ``input_ids`` stop at the last query
    token: causal attention from the query span never sees the chat suffix, so it is not run.
    """

    text: str
    input_ids: list[int]
    doc_ids: list[str]  # in prompt order
    doc_spans: list[tuple[int, int]]
    query_span: tuple[int, int]
    full_length: int  # tokens of the whole prompt, chat suffix included
    # the permutation-invariant layout (``build_invariant_prompt``): each token's position id, and the
    # sequence span of each document block (a block attends to the header and to itself only); None: causal
    positions: list[int] | None = None
    blocks: list[tuple[int, int]] | None = None

    @property
    def invariant(self) -> bool:
        return self.blocks is not None


def truncate_words(text: str, words: int | None) -> str:
    """The first ``words`` whitespace-separated words of ``text`` (all of it when None)."""
    if words is None:
        return text.strip()
    if words < 1:
        raise PromptError(f"words={words}: documents must keep at least one word")
    return " ".join(text.split()[:words])


def document_text(title: str | None, body: str, words: int | None) -> str:
    """``title + "\\n" + body`` with the body cut to its first ``words`` words (as ICR does)."""
    body = truncate_words(body or "", words)
    title = (title or "").strip()
    return f"{title}\n{body}" if title else body


@dataclass(frozen=True)
class CandidateOrder:
    """Where each first-stage candidate goes in the prompt.

    ``permutation(query_id, n)[i]`` is the first-stage rank (0-based) of the document at prompt
    position i. The default, ``CandidateOrder()``, is ICR's: the rank-1 candidate last, nearest the
    query. ``CandidateOrder(shuffle_seed=s)`` places the candidates in a random order drawn from
    ``s`` and the query id, the same on every run and machine, so that nearness to the query carries
    no first-stage information. ``CandidateOrder(rank1_last=False)`` keeps the first-stage order.
    """

    rank1_last: bool = True
    shuffle_seed: int | None = None

    def __post_init__(self):
        if self.shuffle_seed is not None and (isinstance(self.shuffle_seed, bool) or not isinstance(self.shuffle_seed, int)):
            raise PromptError(f"shuffle_seed={self.shuffle_seed!r}: give a whole number (or None for first-stage order)")

    @property
    def shuffled(self) -> bool:
        return self.shuffle_seed is not None

    @property
    def name(self) -> str:
        if self.shuffled:
            return f"shuffled (seed {self.shuffle_seed})"
        return "rank 1 last" if self.rank1_last else "rank 1 first"

    def permutation(self, query_id: str, n: int) -> tuple[int, ...]:
        if self.shuffled:
            ranks = list(range(n))
            # str seeds hash with sha512 in random.Random: the same draw on every platform and run
            random.Random(f"{self.shuffle_seed}:{query_id}").shuffle(ranks)
            return tuple(ranks)
        return tuple(range(n - 1, -1, -1)) if self.rank1_last else tuple(range(n))

    def apply(self, docs: Sequence[Document], query_id: str = "") -> list[Document]:
        """First-stage order -> prompt order."""
        return [docs[r] for r in self.permutation(str(query_id), len(docs))]


ICR_ORDER = CandidateOrder()


def prompt_order(docs: Sequence[Document], rank1_last: bool = True) -> list[Document]:
    """First-stage order -> prompt order. ICR puts the rank-1 candidate last, nearest the query."""
    return CandidateOrder(rank1_last=rank1_last).apply(docs)


INVARIANT_MARKER = "[document] "  # no number: a slot's number would tell the block where it sits


def check_unicode(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate, left by decoding bytes with errors='surrogateescape'):
    no tokenizer can encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PromptError(f"{what} holds {text[err.start]!r} at character {err.start}, a lone surrogate that is not "
                          "valid Unicode: decode its source as UTF-8 (or drop the character)") from None


def _check_docs(query: str, docs: Sequence[Document], tokenizer) -> list[str]:
    if not query or not query.strip():
        raise PromptError("the query is empty: give a non-empty query text")
    check_unicode(query, "the query")
    for d in docs:
        check_unicode(d.text, f"document {d.doc_id}")
    if not docs:
        raise PromptError("no candidate documents: give at least one document to rank")
    ids = [d.doc_id for d in docs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PromptError(f"duplicate document ids {dup[:5]}: each candidate must appear once")
    if not getattr(tokenizer, "is_fast", False):
        raise PromptError("spans need a fast tokenizer (offset mapping): load it with use_fast=True")
    return ids


def overlapping_tokens(offsets, start: int, end: int) -> tuple[int, int]:
    """Token range [first, last+1) of tokens whose character span overlaps [start, end).
    An empty character range owns no token (an empty document ranks last)."""
    if end <= start:
        first = next((i for i, (s, e) in enumerate(offsets) if s >= start and e > s), len(offsets))
        return (first, first)
    idx = [i for i, (s, e) in enumerate(offsets) if s < end and e > start and e > s]
    if not idx:
        return (0, 0)
    return (idx[0], idx[-1] + 1)


def build_prompt(tokenizer, query: str, docs: Sequence[Document], prefix: str = "", suffix: str = "") -> Prompt:
    """The paper's template with the model's chat markers; docs are given in prompt order."""
    ids = _check_docs(query, docs, tokenizer)

    parts = [prefix + (" " if prefix and not prefix[-1].isspace() else "") + HEADER]
    pos = len(parts[0])
    doc_chars = []
    for i, doc in enumerate(docs, start=1):
        marker = f"[document {i}] "
        doc_chars.append((pos + len(marker), pos + len(marker) + len(doc.text)))
        piece = f"{marker}{doc.text}\n\n"
        parts.append(piece)
        pos += len(piece)
    query = query.strip()
    query_chars = (pos, pos + len(INSTRUCTION) + len(query))
    parts.append(INSTRUCTION + query + suffix)
    text = "".join(parts)

    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    doc_spans = [overlapping_tokens(offsets, s, e) for s, e in doc_chars]
    query_span = overlapping_tokens(offsets, *query_chars)
    if query_span[1] <= query_span[0]:
        raise PromptError("the query span has no tokens; check the tokenizer's offset mapping")
    return Prompt(
        text=text,
        input_ids=list(enc["input_ids"][: query_span[1]]),
        doc_ids=ids,
        doc_spans=doc_spans,
        query_span=query_span,
        full_length=len(enc["input_ids"]),
    )


def canonical_order(docs: Sequence[Document]) -> list[Document]:
    """The documents sorted by id: the one order an invariant prompt is run in, so that its records (and their
    bits, in any dtype) are the same whatever order the candidates came in."""
    return sorted(docs, key=lambda d: d.doc_id)


def build_invariant_prompt(tokenizer, query: str, docs: Sequence[Document], prefix: str = "", suffix: str = "") -> Prompt:
    """A permutation-invariant prompt (after InvariRank and BlockRank, used zero-shot): the header, then one block
    per document (``[document] text``, tokenised on its own), then the instruction and query. Each block attends
    to the header and to itself only and starts at the position right after the header; the query starts after
    the longest block and attends to every block. No block sees another or knows its place, so any order of the
    documents gives each the same attention (up to the summation order of floats; ``canonical_order`` removes
    that too). The attention layout is ``Prompt.positions`` and ``Prompt.blocks``, which the recorder reads."""
    ids = _check_docs(query, docs, tokenizer)
    header = prefix + (" " if prefix and not prefix[-1].isspace() else "") + HEADER
    bos = getattr(tokenizer, "bos_token", None)
    enc = tokenizer(header, add_special_tokens=not (bos and header.startswith(bos)))
    input_ids = list(enc["input_ids"])
    start = len(input_ids)
    positions = list(range(start))
    blocks, doc_spans, longest = [], [], 0
    for doc in docs:
        piece = f"{INVARIANT_MARKER}{doc.text}\n\n"
        e = tokenizer(piece, return_offsets_mapping=True, add_special_tokens=False)
        offsets = [tuple(o) for o in e["offset_mapping"]]
        s0, s1 = overlapping_tokens(offsets, len(INVARIANT_MARKER), len(INVARIANT_MARKER) + len(doc.text))
        n = len(e["input_ids"])
        blocks.append((len(input_ids), len(input_ids) + n))
        doc_spans.append((len(input_ids) + s0, len(input_ids) + s1))
        input_ids += e["input_ids"]
        positions += range(start, start + n)
        longest = max(longest, n)
    query = query.strip()
    tail = INSTRUCTION + query
    e = tokenizer(tail + suffix, return_offsets_mapping=True, add_special_tokens=False)
    offsets = [tuple(o) for o in e["offset_mapping"]]
    q0, q1 = overlapping_tokens(offsets, 0, len(tail))
    if q1 <= q0:
        raise PromptError("the query span has no tokens; check the tokenizer's offset mapping")
    q_start = start + longest  # every block ends before it, whatever its length
    query_span = (len(input_ids) + q0, len(input_ids) + q1)
    full_length = start + longest + len(e["input_ids"])
    input_ids += e["input_ids"][:q1]
    positions += range(q_start, q_start + q1)
    text = header + "".join(f"{INVARIANT_MARKER}{d.text}\n\n" for d in docs) + tail + suffix
    return Prompt(text=text, input_ids=input_ids, doc_ids=ids, doc_spans=doc_spans, query_span=query_span,
                  full_length=full_length, positions=positions, blocks=blocks)
