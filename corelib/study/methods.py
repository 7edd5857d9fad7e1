"""The study's methods: one name, one colour and one line style per method, used by every figure and table.

``key`` is the name the library and the CLI use for a head detector (``--heads core:8``); methods that
select no heads (first stages, ICR, the bi-encoder) have none.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Method:
    label: str  # the name in tables, figures and the report
    colour: str
    key: str | None = None  # head detector (heads.detect_heads / niah), if the method selects heads
    what: str = ""


# NIAH-R from a second needle grid at the re-ranking prompts' length (Profile.niah_prompt_lengths): a method of its
# own (its own colour, drawn dotted), beside NIAH-R's heads found at the profile's shorter context lengths
NIAH_PROMPT = "NIAH-R (prompt length)"

METHODS: dict[str, Method] = {m.label: m for m in (
    Method("BM25", "#7f7f7f", what="the first stage (lexical)"),
    Method("Dense", "#bcbd22", what="a dense first stage (its own top k)"),
    Method("Bi-encoder", "#8c564b", what="the sentence encoder re-ranking the same candidates"),
    Method("ICR", "#1f77b4", what="attention re-ranking with all heads"),
    Method("QR-R", "#ff7f0e", "qr", "the top heads by attention mass on the positive"),
    Method("CoRe-R", "#d62728", "core", "the top heads by the contrastive CoRe score"),
    Method("NIAH-R", "#2ca02c", "niah", "the top retrieval heads of needle-in-a-haystack decoding"),
    Method(NIAH_PROMPT, "#17becf", what="NIAH-R's heads from needle trials at the re-ranking prompts' length"),
    Method("Layer window", "#9467bd", what="all heads of the best contiguous layer window"),
)}

# Table 1's method columns, in order (first stages, the bi-encoder, then the attention re-rankers)
TABLE1 = ("BM25", "Dense", "Bi-encoder", "ICR", "QR-R", "CoRe-R", "NIAH-R", "Layer window")
FIRST_STAGE_METHODS = {"bm25": "BM25", "dense": "Dense"}  # the profile's first stage -> its method
# methods whose heads are detected on a detection source (NQ or in-domain): label -> detector key
DETECTED = {label: m.key for label, m in METHODS.items() if m.key in ("qr", "core")}
NIAH_SOURCE = "needle trials"  # NIAH-R's heads come from needle-in-a-haystack decoding, not from a detection set
NIAH_PROMPT_SOURCE = "needle trials at prompt length"
NIAH_SOURCES = (NIAH_SOURCE, NIAH_PROMPT_SOURCE)
INVARIANT_SOURCE = "nq, invariant prompt"  # the NQ detection set under the permutation-invariant prompt
HEAD_SOURCES = {
    "nq": "NQ detection set (the paper's source)",
    INVARIANT_SOURCE: "NQ detection set under the permutation-invariant prompt",
    "in-domain": "in-domain BM25 candidates, leave-one-collection-out",
    "in-domain, position-matched": "in-domain, each positive against its 4 nearest-slot negatives, leave-one-collection-out",
}

MODEL_MARKERS = ("o", "s", "D", "^", "v", "P")
# Models are told apart by shades of grey and a marker each, never by a method's colour (the methods own the hues)
MODEL_SHADES = ("#404040", "#737373", "#a0a0a0", "#c4c4c4", "#595959", "#8a8a8a")  # black is kept for the pooled rows


def model_styles(models) -> dict[str, dict]:
    """Each model's line colour (a shade of grey) and marker, in the order given: pass as ``**model_styles(ms)[m]``."""
    return {m: {"color": MODEL_SHADES[i % len(MODEL_SHADES)], "marker": MODEL_MARKERS[i % len(MODEL_MARKERS)]}
            for i, m in enumerate(models)}


def colour(label: str) -> str:
    """The method's colour (a method named with a suffix, 'CoRe-R (shuffled)', takes its base's)."""
    base = next((m for m in sorted(METHODS, key=len, reverse=True) if label.startswith(m)), None)
    if base is None:
        raise UsageError(f"unknown method {label!r}: the study's methods are {', '.join(METHODS)}")
    return METHODS[base].colour


def line_style(label: str) -> str:
    """The method's line style: dotted for NIAH-R (prompt length), a variant of NIAH-R; solid otherwise."""
    return ":" if label.startswith(NIAH_PROMPT) else "-"


def palette(labels) -> dict[str, str]:
    return {label: colour(label) for label in labels}
