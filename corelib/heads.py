"""Head selection: CoRe (contrastive) and QR (absolute mass) scores, and head sets as data."""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from .errors import MissingInput, UsageError, WrongType
from .storage import write_output
from .records import QueryRecord

HEAD_METHODS = ("core", "qr", "niah")  # detection methods whose rankings ``method:K`` names


def _stack_mass(records: Sequence[QueryRecord], calibrated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not records:
        raise UsageError("no detection records: run detection on at least one sample")
    if any(r.positive is None for r in records):
        raise UsageError("detection records need the positive's position (record.positive)")
    if calibrated and any(r.doc_mass_na is None for r in records):
        raise UsageError("calibrated detection needs records built with calibrate=True")
    mass = torch.stack([(r.doc_mass - r.doc_mass_na) if calibrated else r.doc_mass for r in records]).double()
    return mass, torch.tensor([r.positive for r in records])  # [S, L, H, N], [S]


def core_scores(mass: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """S_CoRe: mean over samples of softmax_d(s_d / t) at the positive. mass [S, L, H, N] -> [L, H]."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise WrongType(f"temperature={temperature!r}: give a number, e.g. 0.001")
    if not 0 < temperature < math.inf:  # also refuses NaN, which would rank every head as NaN
        raise UsageError(f"temperature={temperature}: it must be a positive finite number (the paper uses 0.001 or 0.1)")
    logp = torch.log_softmax(mass / temperature, dim=-1)
    pos = logp.gather(-1, positives.view(-1, 1, 1, 1).expand(*mass.shape[:3], 1)).squeeze(-1)
    return pos.exp().mean(0).float()


def qr_scores(mass: torch.Tensor, positives: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    """QR: mean over samples of the attention mass on the positive. mass [S, L, H, N] -> [L, H]."""
    pos = mass.gather(-1, positives.view(-1, 1, 1, 1).expand(*mass.shape[:3], 1)).squeeze(-1)
    return pos.mean(0).float()


DETECTORS: dict[str, Callable[..., torch.Tensor]] = {"core": core_scores, "qr": qr_scores}


def same_model(a: str, b: str) -> bool:
    """Whether two model names name the same model: a hub id and its local copy or bare name match
    (``meta-llama/Llama-3.1-8B-Instruct``, ``Llama-3.1-8B-Instruct``), case aside."""
    return a.split("/")[-1].lower() == b.split("/")[-1].lower()


@dataclass
class HeadSet:
    """An ordered list of (layer, head) pairs, 0-based, with where it came from."""

    heads: list[tuple[int, int]]
    model_id: str
    method: str = "manual"
    provenance: dict = field(default_factory=dict)
    ranking: bool = False  # True: every head of the model in score order (take ``top(k)`` to re-rank)
    fingerprint: str | None = None  # the exact weights it was detected on (models.ModelSpec.fingerprint)
    scores: list[float] | None = None  # each head's detection score, in the order of ``heads`` (where known)

    def __post_init__(self):
        if isinstance(self.heads, (str, bytes)) or not isinstance(self.heads, Sequence):
            raise UsageError(f"heads is a {type(self.heads).__name__}: give a list of (layer, head) pairs")
        pairs = []
        for item in self.heads:
            if (isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2
                    or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in item)):
                raise UsageError(f"head {item!r} is not a (layer, head) pair of whole numbers: give e.g. [[20, 3], [15, 1]]")
            pairs.append((int(item[0]), int(item[1])))
        repeated = sorted({p for p in pairs if pairs.count(p) > 1})
        if repeated:
            raise UsageError(f"heads {repeated[:4]} are listed more than once: a head set names each head once "
                             "(a repeated head would count its attention twice)")
        self.heads = pairs
        if self.scores is not None:
            if len(self.scores) != len(pairs) or not all(isinstance(x, numbers.Real) and math.isfinite(x)
                                                         for x in self.scores):
                raise UsageError(f"scores: give one finite number per head ({len(pairs)}), in the order of the heads")
            self.scores = [float(x) for x in self.scores]

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def deepest_layer(self) -> int:
        return max(l for l, _ in self.heads)

    def top(self, k: int) -> "HeadSet":
        if not 1 <= k <= len(self.heads):
            raise UsageError(f"k={k}: this head set has {len(self.heads)} heads; choose k between 1 and {len(self.heads)}")
        return HeadSet(self.heads[:k], self.model_id, self.method, {**self.provenance, "k": k},
                       fingerprint=self.fingerprint, scores=None if self.scores is None else self.scores[:k])

    def to_json(self) -> dict:
        return {"model_id": self.model_id, "method": self.method, "kind": "ranking" if self.ranking else "set",
                **({"model_fingerprint": self.fingerprint} if self.fingerprint else {}),
                "heads": [list(h) for h in self.heads], **({"scores": self.scores} if self.scores is not None else {}),
                "provenance": self.provenance}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if not (path.is_symlink() or path.exists()):
            path.parent.mkdir(parents=True, exist_ok=True)
        write_output(path, json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadSet":
        try:
            data = json.loads(Path(path).read_text())
            kind = data.get("kind", "set")
            if kind not in ("set", "ranking"):
                raise UsageError(kind)
            return cls(data["heads"], data["model_id"], data.get("method", "manual"), data.get("provenance", {}),
                       ranking=kind == "ranking", fingerprint=data.get("model_fingerprint"), scores=data.get("scores"))
        except FileNotFoundError:
            raise MissingInput(f"head-set file {path} does not exist: run `python -m corelib detect` first") from None
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise UsageError(f"{path} is not a head-set file (needs model_id and heads: [[layer, head], ...]): {err}") from None

    def check(self, model_id: str, num_layers: int, num_heads: int, fingerprint: str | None = None) -> None:
        """Raise if the set belongs to another model (by id, or by weights where both fingerprints are known)
        or names a head the model lacks."""
        if not same_model(self.model_id, model_id):
            raise UsageError(f"this head set was detected on {self.model_id}, not on {model_id}: detect heads for {model_id}")
        if self.fingerprint and fingerprint and self.fingerprint != fingerprint:
            raise UsageError(f"this head set was detected on other weights named {self.model_id} ({self.fingerprint}), "
                             f"not on the {model_id} given ({fingerprint}): detect heads for this model, or point "
                             "--heads-dir at its own rankings")
        bad = [(l, h) for l, h in self.heads if not (0 <= l < num_layers and 0 <= h < num_heads)]
        if bad:
            raise UsageError(f"heads {bad[:4]} are outside {model_id} ({num_layers} layers x {num_heads} heads, 0-based)")


@dataclass
class HeadScores:
    """A score for every head of a model, with the detection settings that produced it."""

    scores: torch.Tensor  # [L, H]
    model_id: str
    method: str
    provenance: dict
    tiebreak: torch.Tensor | None = None  # [L, H]: orders heads of equal score (higher first), e.g. NIAH's zeros
    fingerprint: str | None = None  # the exact weights the scores were detected on

    def order(self) -> list[tuple[int, int]]:
        """All heads, best first (ties broken by ``tiebreak`` where given, then by layer and head)."""
        L, H = self.scores.shape
        flat = self.scores.flatten().tolist()
        second = self.tiebreak.flatten().tolist() if self.tiebreak is not None else [0.0] * (L * H)
        idx = sorted(range(L * H), key=lambda i: (-flat[i], -second[i], i))
        return [(i // H, i % H) for i in idx]

    def head_set(self, k: int) -> HeadSet:
        return HeadSet(self.order()[:k], self.model_id, self.method, {**self.provenance, "k": k},
                       fingerprint=self.fingerprint)

    def ranking(self) -> HeadSet:
        """Every head in score order, marked as a ranking (a file of it needs ``:K`` to re-rank)."""
        return HeadSet(self.order(), self.model_id, self.method, dict(self.provenance), ranking=True,
                       fingerprint=self.fingerprint)

    def table(self) -> pd.DataFrame:
        L, H = self.scores.shape
        df = pd.DataFrame([(l, h, float(self.scores[l, h])) for l, h in self.order()], columns=["layer", "head", "score"])
        df.insert(0, "rank", range(1, len(df) + 1))
        df["relative_depth"] = (df["layer"] + 0.5) / L
        return df


def detect_heads(
    records: Sequence[QueryRecord],
    method: str = "core",
    *,
    temperature: float = 0.001,
    calibrated: bool = False,
    model_id: str = "",
    provenance: dict | None = None,
    fingerprint: str | None = None,
) -> HeadScores:
    """Score every head on detection records (uncalibrated mass unless ``calibrated``)."""
    mass, positives = _stack_mass(records, calibrated)
    prov = {"samples": len(records), "queries": len({r.query_id for r in records}), "calibrated": calibrated,
            **(provenance or {})}
    return scores_from_mass(mass, positives, method, temperature=temperature, model_id=model_id, provenance=prov,
                            fingerprint=fingerprint)


def scores_from_mass(mass: torch.Tensor, positives: torch.Tensor, method: str = "core", *, temperature: float = 0.001,
                     model_id: str = "", provenance: dict | None = None, fingerprint: str | None = None) -> HeadScores:
    """Head scores from document masses [S, L, H, N] (absent documents: -inf) and the positive of each sample."""
    try:
        detector = DETECTORS[method]
    except KeyError:
        raise UsageError(f"unknown method {method!r}: use one of {sorted(DETECTORS)}") from None
    scores = detector(mass, positives, temperature)
    finite = torch.isfinite(mass[:, 0, 0, :]).sum(-1)
    prov = {"negatives": int(finite.max()) - 1 if len(finite) else 0,
            "positions": sorted({int(p) for p in positives}) if len(positives) <= 50 else "varied",
            "temperature": temperature if method == "core" else None, **(provenance or {})}
    return HeadScores(scores, model_id, method, prov, fingerprint=fingerprint)


def in_domain_samples(records: Sequence[QueryRecord], qrels: dict[str, dict[str, int]],
                      nearest: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Detection samples from re-ranking records (in-domain hard negatives at natural positions).

    Each judged-relevant candidate is a positive; its negatives are the prompt's other candidates
    that are not judged relevant (unjudged ones count as non-relevant; the other relevant ones
    are left out). ``nearest=m``: only the m negatives in the prompt slots nearest the positive
    (position-matched). Uses the uncalibrated mass, as detection on NQ does. Returns the mass
    [S, L, H, N] with the positive at index 0 and absent documents at -inf, the positives (all 0),
    and each positive's prompt slot.
    """
    rows, slots = [], []
    for r in records:
        rel = qrels.get(r.query_id, {})
        relevant = [i for i, d in enumerate(r.doc_ids) if rel.get(d, 0) > 0]
        negatives = [i for i, d in enumerate(r.doc_ids) if rel.get(d, 0) <= 0]
        if not relevant or not negatives:
            continue
        for i in relevant:
            negs = sorted(negatives, key=lambda j: (abs(j - i), j))[:nearest] if nearest else negatives
            rows.append(r.doc_mass[..., [i] + sorted(negs)])
            slots.append(i)
    if not rows:
        raise UsageError("no record has both a judged-relevant and a non-relevant candidate: nothing to contrast")
    n = max(x.shape[-1] for x in rows)
    mass = torch.full((len(rows), *rows[0].shape[:2], n), float("-inf"), dtype=torch.float64)
    for k, x in enumerate(rows):
        mass[k, ..., : x.shape[-1]] = x.double()
    return mass, torch.zeros(len(rows), dtype=torch.long), slots


@dataclass(frozen=True)
class ReleasedModel:
    """A model whose CoRe head scores the paper's authors released (``core-released-heads/<folder>/``)."""

    folder: str
    temperature: float
    layers: int
    heads: int


RELEASED_MODELS: dict[str, ReleasedModel] = {
    "mistralai/Mistral-7B-Instruct-v0.2": ReleasedModel("mistral", 0.001, 32, 32),
    "meta-llama/Llama-3.1-8B-Instruct": ReleasedModel("llama", 0.1, 32, 32),
    "microsoft/phi-4": ReleasedModel("phi", 0.1, 40, 40),
    "ibm-granite/granite-3.2-8b-instruct": ReleasedModel("granite", 0.001, 40, 32),
}
RELEASED_PRUNE_LEVELS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7)
RELEASED_DIR = "core-released-heads"
# QRHead's released Llama-3.1-8B heads (NQ), top 16: published as a list only
RELEASED_QR_HEADS = {"meta-llama/Llama-3.1-8B-Instruct": [
    (14, 22), (13, 16), (14, 28), (14, 31), (16, 19), (14, 1), (16, 26), (17, 24), (14, 0), (13, 0), (16, 25),
    (13, 12), (13, 1), (13, 10), (17, 27), (20, 14)]}


def _released_model(model_id: str) -> tuple[str, ReleasedModel] | None:
    return next(((k, r) for k, r in RELEASED_MODELS.items() if same_model(k, model_id)), None)


def released_scores(model_id: str, prune: float = 0.0, data: str | os.PathLike | None = None) -> HeadScores:
    """The authors' released CoRe score of every head of one of the paper's models, detected on the model
    with its last ``prune`` share of layers removed (0: unpruned), from ``<data>/core-released-heads/``.
    The file must name every head of the model once ("layer-head", 0-based) with a finite score, and give
    0 to every head of a pruned layer; the scores cover the kept layers only."""
    from .data import DataError, data_dir

    found = _released_model(model_id)
    if found is None:
        raise UsageError(f"no released head scores for {model_id}: they exist for {', '.join(RELEASED_MODELS)}")
    full_id, rel = found
    if prune not in RELEASED_PRUNE_LEVELS:
        raise UsageError(f"prune={prune}: the released scores are for pruned shares {list(RELEASED_PRUNE_LEVELS)}")
    root = data_dir(data)
    path = (root / RELEASED_DIR / rel.folder / f"core_temp{rel.temperature:g}_prune{prune}.json") if root else None
    if path is None or not path.is_file():
        raise DataError(f"released head scores not found at {path}: give the data directory holding {RELEASED_DIR}/ "
                        "(--data DIR or CORELIB_DATA)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object mapping 'layer-head' to a score")
    scores = torch.full((rel.layers, rel.heads), float("nan"), dtype=torch.float64)
    for key, value in raw.items():
        parts = key.split("-")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise DataError(f"{path}: key {key!r} is not 'layer-head' (0-based whole numbers)")
        l, h = int(parts[0]), int(parts[1])
        if not (l < rel.layers and h < rel.heads):
            raise DataError(f"{path}: head {key} is outside {full_id} ({rel.layers} layers x {rel.heads} heads)")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise DataError(f"{path}: head {key} has score {value!r}, not a finite number")
        scores[l, h] = float(value)
    if torch.isnan(scores).any():
        missing = [f"{l}-{h}" for l, h in torch.isnan(scores).nonzero().tolist()][:4]
        raise DataError(f"{path}: {int(torch.isnan(scores).sum())} heads have no score (e.g. {missing}); "
                        f"a release file scores all {rel.layers * rel.heads} heads")
    kept = math.floor(round(rel.layers * (1 - prune), 6))
    if (scores[kept:] != 0).any():
        raise DataError(f"{path}: heads of the pruned layers {kept}-{rel.layers - 1} have non-zero scores")
    prov = {"source": f"released by the CoRe authors ({RELEASED_DIR}/{rel.folder}/{path.name})", "temperature":
            rel.temperature, "pruned share": prune, "kept layers": kept}
    return HeadScores(scores[:kept].float(), full_id, "core", prov)


def released_heads(model_id: str, method: str = "core", data: str | os.PathLike | None = None) -> HeadSet | None:
    """The paper's released heads of a model (None if it has none): CoRe's ranking of every head from the
    released scores (unpruned), or QRHead's published top 16 (Llama-3.1-8B)."""
    if method == "qr":
        found = next((k for k in RELEASED_QR_HEADS if same_model(k, model_id)), None)
        return None if found is None else HeadSet(RELEASED_QR_HEADS[found], found, "qr", {"source": "QRHead release (NQ), top-16"})
    if method != "core" or _released_model(model_id) is None:
        return None
    return released_scores(model_id, 0.0, data).ranking()


# ----------------------------------------------------------------------------- naming head sets


def default_heads_dir() -> Path:
    """Where head rankings are looked up by ``method:K`` and ``detect`` writes them: ``$CORELIB_HEADS``, else
    ./results/heads (a ranking not found there is taken from the package's, ``shipped_heads_dir``, unless a folder
    was chosen with ``heads_dir`` or ``$CORELIB_HEADS``)."""
    return Path(os.environ.get("CORELIB_HEADS", Path("results") / "heads"))


def shipped_heads_dir() -> Path:
    """The built-in models' head rankings that ship with the package (with each head's score), keyed by model and
    fingerprint: what ``core:8`` reads from any directory when no ranking of one's own is found."""
    return Path(__file__).resolve().parent / "head_rankings"


def head_ranking_path(heads_dir: str | os.PathLike, model_id: str, method: str, fingerprint: str | None = None) -> Path:
    """The one naming rule for a model's head ranking: ``<dir>/<model id, '/' as '__'>.<method>.json``. A local
    directory's id is only its folder name (two runs' ``checkpoint-500``), so its file name also carries
    12 characters of the directory's fingerprint: ``checkpoint-500-1a2b3c4d5e6f.core.json``."""
    name = model_id.replace("/", "__")
    if fingerprint and fingerprint.startswith("dir:"):
        name += "-" + fingerprint.removeprefix("dir:")[:12]
    return Path(heads_dir) / f"{name}.{method}.json"


@dataclass(frozen=True)
class HeadSpec:
    """A parsed ``--heads`` value: ``all``, ``METHOD:K`` (a detected ranking's top K) or ``FILE[:K]``."""

    method: str | None = None  # core, qr, niah
    path: Path | None = None
    k: int | None = None

    @property
    def is_all(self) -> bool:
        return self.method is None and self.path is None


def parse_heads(spec: str) -> HeadSpec:
    """Parse ``all | core:K | qr:K | niah:K | FILE[:K]`` (checked before any model loads)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("heads: give all, core:K, qr:K, niah:K or a head-set file FILE[:K]")
    spec = spec.strip()
    if spec == "all":
        return HeadSpec()
    name, k = spec, None
    # a file whose own name holds a colon ("runs:2024/heads.json") is that file, not FILE:K
    if ":" in spec and not (spec.endswith(".json") and Path(spec).is_file()):
        name, _, k_text = spec.rpartition(":")
        if not (k_text.isascii() and k_text.isdigit()) or int(k_text) < 1:
            raise UsageError(f"heads {spec!r}: K must be a positive whole number of heads written in digits 0-9, "
                             f"e.g. {name}:8")
        k = int(k_text)
    if name in HEAD_METHODS:
        if k is None:
            raise UsageError(f"heads {spec!r}: say how many of the {name} heads to keep, e.g. {name}:8")
        return HeadSpec(method=name, k=k)
    if not name.endswith(".json"):
        raise UsageError(f"heads {spec!r}: use all, {', '.join(m + ':K' for m in HEAD_METHODS)} or a .json head-set file")
    return HeadSpec(path=Path(name), k=k)


def resolve_heads(spec: str | HeadSpec, model_id: str, heads_dir: str | os.PathLike | None = None,
                  fingerprint: str | None = None) -> HeadSet | None:
    """The head set a spec names for a model (None = all heads). ``METHOD:K`` reads the ranking at
    ``head_ranking_path`` (or the paper's released heads for the paper's models)."""
    spec = parse_heads(spec) if isinstance(spec, str) else spec
    if spec.is_all:
        return None
    if spec.method is not None:
        path = head_ranking_path(heads_dir or default_heads_dir(), model_id, spec.method, fingerprint)
        if path.is_file():
            return HeadSet.load(path).top(spec.k)
        shipped = head_ranking_path(shipped_heads_dir(), model_id, spec.method, fingerprint)
        if heads_dir is None and "CORELIB_HEADS" not in os.environ and shipped.is_file():  # no folder was chosen
            ranking = HeadSet.load(shipped)
            if ranking.fingerprint == fingerprint:  # the package's ranking is of these exact weights
                return ranking.top(spec.k)
        released = released_heads(model_id, spec.method)
        if released is not None:
            return released.top(min(spec.k, len(released)))
        raise MissingInput(
            f"no {spec.method} head ranking for {model_id} at {path}: run "
            f"`python -m corelib detect --model {model_id} --method {spec.method}` first"
        )
    hs = HeadSet.load(spec.path)
    if spec.k is not None:
        return hs.top(spec.k)
    if hs.ranking:
        raise UsageError(f"{spec.path} ranks all {len(hs)} heads of {hs.model_id}: take its top K with {spec.path}:K "
                         "(e.g. :8), or it would score with every head (ICR)")
    return hs
