"""NIAH retrieval heads (Wu et al., "Retrieval Head Mechanistically Explains Long-Context Factuality").

A needle (one sentence of facts) is put into a haystack of unrelated text at a given depth and
context length; the model is asked a question the needle answers and decodes greedily. At each
decoding step a head *copies* when the token just generated lies in the needle and the head's
highest-attention position (from the step that produced the token) is inside the needle and holds
that same token; it then scores 1/|needle|. A trial counts when the answer recalls the needle
(ROUGE-1 recall above 0.5, as Wu et al.'s code keeps trials); a head's retrieval score is its mean
over the counted trials. Heads are ranked by it; ties (above all the heads that never copy) are
broken by the head's mean attention on the needle while decoding, never by layer index.

Decoding needs the LM head, which the backbones leave out: it is passed in (``models.output_embeddings``).
Each trial's per-head hits are cached on disk like records (safetensors, atomic, checked on read).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .attention import new_cache, prefill, step_attention
from .errors import UsageError
from .heads import HeadScores
from .models import LoadedModel, ModelSpec, as_spec, dtype_name
from .prompts import PromptError, overlapping_tokens
from .progress import progress_bar
from .records import CacheStatus
from .storage import cache_root, content_digest, header_metadata, read_checked_tensors, save_tensors

log = logging.getLogger(__name__)

NIAH_VERSION = 1  # bump when the prompt, the decoding or the hit rule changes: cached trials then miss
MIN_RECALL = 0.5  # a trial counts when the answer's ROUGE-1 recall of the needle is above this
INSTRUCTION = "Read the following text and answer the question after it.\n\n"
QUESTION = "\n\nBased on the text above, answer the question in one sentence.\nQuestion: "


@dataclass(frozen=True)
class Needle:
    text: str  # the sentence put into the haystack
    question: str  # answered by that sentence


# Facts that no haystack (ADI abstracts on documentation) and no evaluated collection contains.
NEEDLES: tuple[Needle, ...] = (
    Needle("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
           "What is the best thing to do in San Francisco?"),
    Needle("The secret ingredient of the lighthouse keeper's soup is roasted fennel with a spoon of honey.",
           "What is the secret ingredient of the lighthouse keeper's soup?"),
    Needle("The blue train to Marlow leaves from platform nine at seven minutes past eleven every night.",
           "When and from where does the blue train to Marlow leave?"),
    Needle("Professor Okafor keeps her spare keys inside a green teapot on the top shelf of the library.",
           "Where does Professor Okafor keep her spare keys?"),
)


@dataclass(frozen=True)
class NeedleTrial:
    needle: Needle
    context_tokens: int  # haystack tokens around the needle (needle included)
    depth: float  # 0 = the needle opens the haystack, 1 = it closes it


@dataclass
class NiahPrompt:
    input_ids: list[int]
    needle_span: tuple[int, int]  # token span of the needle in input_ids


@dataclass
class TrialResult:
    hits: torch.Tensor  # [L, H]: sum over decoding steps of 1/|needle| when the head copied
    needle_mass: torch.Tensor  # [L, H]: mean attention on the needle over the decoding steps
    answer: str
    recall: float  # ROUGE-1 recall of the needle's words in the answer
    steps: int
    prompt_tokens: int
    seconds: float = 0.0  # wall time of the prefill and the decoding

    def counted(self, min_recall: float = MIN_RECALL) -> bool:
        return self.recall > min_recall


def collection_haystack(collection) -> str:
    """A haystack from a collection's corpus: every document's title and text, in corpus order."""
    if not collection.corpus:
        raise UsageError(f"{collection.name} has no corpus.jsonl: a haystack needs document texts")
    return " ".join(f"{t.strip().rstrip('.')}. {b.strip()}" if t and t.strip() else b.strip()
                    for t, b in collection.corpus.values())


def trial_grid(needles: Sequence[Needle], lengths: Iterable[int], depths: Iterable[float]) -> list[NeedleTrial]:
    """Every needle at every context length and depth."""
    lengths, depths = list(lengths), list(depths)
    if not needles or not lengths or not depths:
        raise UsageError("the NIAH grid needs at least one needle, one context length and one depth")
    bad = [d for d in depths if not 0 <= d <= 1]
    if bad:
        raise UsageError(f"NIAH depths {bad} are outside [0, 1] (0 = start of the haystack, 1 = its end)")
    if any(n < 16 for n in lengths):
        raise UsageError(f"NIAH context lengths {lengths}: each needs at least 16 tokens")
    return [NeedleTrial(n, length, d) for n in needles for length in lengths for d in depths]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge1_recall(reference: str, answer: str) -> float:
    """Share of the reference's words (lower-cased, alphanumeric) that the answer contains, with counts."""
    ref, ans = Counter(words(reference)), Counter(words(answer))
    total = sum(ref.values())
    return sum(min(c, ans[w]) for w, c in ref.items()) / total if total else 0.0


def build_niah_prompt(tokenizer, haystack: str, trial: NeedleTrial, prefix: str = "", suffix: str = "") -> NiahPrompt:
    """The chat-turn prompt: instruction, the haystack cut to ``context_tokens`` tokens with the
    needle inserted at the sentence boundary at or before ``depth``, then the question."""
    if not getattr(tokenizer, "is_fast", False):
        raise PromptError("NIAH prompts need a fast tokenizer (offset mapping)")
    needle = trial.needle.text.strip()
    budget = trial.context_tokens - len(tokenizer(" " + needle, add_special_tokens=False)["input_ids"])
    if budget < 1:
        raise UsageError(f"context_tokens={trial.context_tokens} leaves no room for the haystack around the needle")
    enc = tokenizer(haystack, return_offsets_mapping=True, add_special_tokens=False)
    if len(enc["input_ids"]) < budget:
        raise UsageError(f"the haystack has {len(enc['input_ids'])} tokens, fewer than the {budget} a "
                         f"{trial.context_tokens}-token context needs: give a longer haystack or a shorter length")
    hay = haystack[: enc["offset_mapping"][budget - 1][1]]
    cut = int(round(trial.depth * len(hay)))
    if 0 < cut < len(hay):
        ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", hay[:cut])]
        cut = ends[-1] if ends else 0
    before, after = hay[:cut].rstrip(), hay[cut:].lstrip()
    head = prefix + (" " if prefix and not prefix[-1].isspace() else "") + INSTRUCTION + before + (" " if before else "")
    text = head + needle + (" " if after else "") + after + QUESTION + trial.needle.question.strip() + suffix
    bos = getattr(tokenizer, "bos_token", None)
    full = tokenizer(text, return_offsets_mapping=True, add_special_tokens=not (bos and text.startswith(bos)))
    span = overlapping_tokens([tuple(o) for o in full["offset_mapping"]], len(head), len(head) + len(needle))
    if span[1] <= span[0]:
        raise PromptError("the needle has no tokens in the prompt; check the tokenizer's offset mapping")
    return NiahPrompt(list(full["input_ids"]), span)


def copy_hits(rows: torch.Tensor, needle_ids: torch.Tensor, needle_span: tuple[int, int], token: int) -> torch.Tensor:
    """Wu et al.'s rule for one decoding step: 1/|needle| for each head whose most-attended position
    (rows [L, H, K]) lies in the needle and holds ``token``, the token this step generated; else 0."""
    n0, n1 = needle_span
    top = rows.argmax(-1)  # [L, H]
    in_needle = (top >= n0) & (top < n1)
    same = needle_ids[(top - n0).clamp(0, n1 - n0 - 1)] == token
    return (in_needle & same).float() / (n1 - n0)


@torch.inference_mode()
def run_trial(lm: LoadedModel, lm_head: torch.Tensor, prompt: NiahPrompt, needle: str,
              max_new_tokens: int) -> TrialResult:
    """Decode greedily (prefill once, then one token at a time on the KV cache), scoring each head's
    copying at every step. ``lm_head`` is the output embedding [vocab, hidden]."""
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens={max_new_tokens}: decode at least one token")
    t0 = time.perf_counter()
    ids = list(prompt.input_ids)
    n0, n1 = prompt.needle_span
    needle_ids = torch.tensor(ids[n0:n1])
    cache = new_cache(lm)
    prefill(lm, ids[:-1], cache)
    L, H = lm.num_layers, lm.num_heads
    hits, mass = torch.zeros(L, H), torch.zeros(L, H)
    stop = {t for t in (lm.tokenizer.eos_token_id, getattr(lm.tokenizer, "pad_token_id", None)) if t is not None}
    generated = []
    token = ids[-1]
    for step in range(max_new_tokens):
        hidden, rows = step_attention(lm, token, cache, len(ids) - 1)
        token = int(torch.argmax(hidden.float() @ lm_head.float().T))
        hits += copy_hits(rows, needle_ids, (n0, n1), token)
        mass += rows[..., n0:n1].sum(-1)
        if token in stop:
            break
        generated.append(token)
        ids.append(token)
    steps = step + 1
    answer = lm.tokenizer.decode(generated, skip_special_tokens=True)
    return TrialResult(hits, mass / steps, answer, rouge1_recall(needle, answer), steps, len(prompt.input_ids),
                       time.perf_counter() - t0)


# ----------------------------------------------------------------------------- cache


def trial_fields(fingerprint: str, dtype, trial: NeedleTrial, haystack: str, max_new_tokens: int) -> dict:
    if not fingerprint:
        raise UsageError("the model has no fingerprint: load it with load_model / from_modules")
    return {"format": NIAH_VERSION, "model": fingerprint, "dtype": dtype_name(dtype),
            "needle": trial.needle.text, "question": trial.needle.question, "context_tokens": trial.context_tokens,
            "depth": trial.depth, "haystack": content_digest(haystack), "max_new_tokens": max_new_tokens}


class TrialStore:
    """Cached trials: ``<root>/niah-v<version>/<model>/<key>.safetensors``, checked against the request on read."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else cache_root() / "records"

    def path(self, model_id: str, fields: dict) -> Path:
        return self.root / f"niah-v{NIAH_VERSION}" / model_id.replace("/", "__") / f"{content_digest(fields)[:32]}.safetensors"

    def get(self, model_id: str, fields: dict) -> TrialResult | None:
        path = self.path(model_id, fields)
        found = read_checked_tensors(path, fields, ("hits", "needle_mass"), what="needle trial")
        if found is None:
            return None
        meta, tensors = found
        try:
            info = json.loads(meta["result"])
            return TrialResult(tensors["hits"], tensors["needle_mass"], info["answer"], info["recall"],
                               info["steps"], info["prompt_tokens"], info["seconds"])
        except (KeyError, ValueError, TypeError) as err:  # a damaged or foreign file: recompute it
            log.warning("%s is unreadable (%s): recomputing it", path, err)
            return None

    def held_path(self, model_id: str, fields: dict) -> Path | None:
        """The trial's file if it exists (nothing is read; ``get`` checks it)."""
        path = self.path(model_id, fields)
        return path if path.is_file() else None

    @staticmethod
    def seconds(path: Path) -> float | None:
        """A stored trial's wall time, from its file's header (None where unreadable)."""
        result = header_metadata(path).get("result")
        return None if result is None else float(json.loads(result)["seconds"])

    def put(self, model_id: str, fields: dict, result: TrialResult) -> TrialResult:
        info = {"answer": result.answer, "recall": result.recall, "steps": result.steps,
                "prompt_tokens": result.prompt_tokens, "seconds": result.seconds}
        save_tensors(self.path(model_id, fields), {"hits": result.hits, "needle_mass": result.needle_mass},
                     {"fields": json.dumps(fields, sort_keys=True, ensure_ascii=False), "result": json.dumps(info)})
        return result


def decode_budget(trial: NeedleTrial, max_new_tokens: int | None = None) -> int:
    """Tokens a trial may decode: ``max_new_tokens``, else twice the needle's words plus 16 (room for
    its tokens and a short preamble, counted without a tokenizer)."""
    return max_new_tokens if max_new_tokens is not None else len(words(trial.needle.text)) * 2 + 16


def trial_status(model: LoadedModel | ModelSpec, trials: Sequence[NeedleTrial], haystack: str, *,
                 max_new_tokens: int | None = None, store: TrialStore, timings: int = 10) -> CacheStatus:
    """The trials ``store`` lacks, looked up as ``run_trials`` would, with the wall time of up to
    ``timings`` cached ones (nothing is loaded or decoded)."""
    def held(trial: NeedleTrial) -> Path | None:
        fields = trial_fields(model.fingerprint, model.dtype, trial, haystack, decode_budget(trial, max_new_tokens))
        return store.held_path(model.model_id, fields)

    return CacheStatus.collect(list(trials), held, store.seconds, timings)


def run_trials(model: LoadedModel | ModelSpec, trials: Sequence[NeedleTrial], haystack: str, *,
               max_new_tokens: int | None = None, lm_head: torch.Tensor | None = None,
               store: TrialStore | None = None, progress: str | None = None) -> list[TrialResult]:
    """Every trial's result, from ``store`` when it holds it, else decoded (and stored). A ModelSpec is
    loaded, with its LM head, only when a trial is missing. ``max_new_tokens``: see ``decode_budget``."""
    from .models import output_embeddings

    spec = as_spec(model)
    model_id, fingerprint, dtype = spec.model_id, spec.fingerprint, spec.dtype
    state: dict = {}

    def loaded() -> tuple[LoadedModel, torch.Tensor]:
        if "lm" not in state:
            state["lm"] = spec.load()
            state["head"] = lm_head if lm_head is not None else output_embeddings(spec.name, state["lm"], spec.revision)
        return state["lm"], state["head"]

    out: list[TrialResult | None] = []
    missing = []
    for i, trial in enumerate(trials):
        fields = trial_fields(fingerprint, dtype, trial, haystack, decode_budget(trial, max_new_tokens))
        found = store.get(model_id, fields) if store is not None else None
        out.append(found)
        if found is None:
            missing.append((i, fields))
    for i, fields in progress_bar(missing, progress):
        lm, head = loaded()
        trial = trials[i]
        prompt = build_niah_prompt(lm.tokenizer, haystack, trial, lm.prefix, lm.suffix)
        result = run_trial(lm, head, prompt, trial.needle.text, fields["max_new_tokens"])
        out[i] = store.put(model_id, fields, result) if store is not None else result
    return out


# ----------------------------------------------------------------------------- scores


class NiahError(UsageError):
    """The model retrieved too few needles to rank its heads."""


def niah_scores(results: Sequence[TrialResult], *, min_recall: float = MIN_RECALL, model_id: str = "",
                provenance: dict | None = None, fingerprint: str | None = None) -> HeadScores:
    """Retrieval score of every head: mean copy score over the counted trials, with the mean
    attention on the needle as the tie-breaker (so heads that never copy are not ranked by layer)."""
    if not results:
        raise UsageError("no NIAH trials: run at least one")
    counted = [r for r in results if r.counted(min_recall)]
    if not counted:
        raise NiahError(f"{model_id or 'the model'} retrieved none of the {len(results)} needles (ROUGE-1 recall "
                        f"> {min_recall} in no trial; best {max(r.recall for r in results):.2f}): its heads cannot be ranked")
    scores = torch.stack([r.hits for r in counted]).mean(0)
    tiebreak = torch.stack([r.needle_mass for r in counted]).mean(0)
    prov = {"trials": len(results), "counted": len(counted), "counted share": len(counted) / len(results),
            "heads above 0": int((scores > 0).sum()), "min recall": min_recall,
            "tie-break": "mean attention on the needle while decoding", **(provenance or {})}
    return HeadScores(scores.float(), model_id, "niah", prov, tiebreak=tiebreak.float(), fingerprint=fingerprint)
