"""Query-span attention extraction through transformers' attention-function registry.

A function registered as ``corelib_sdpa`` receives each layer's post-RoPE query and key states,
computes the softmax rows of the query-span tokens only (fp32, scaled before the product, GQA
keys shared rather than copied) and then hands the layer to the stock SDPA implementation.
No [H, T, T] tensor is ever built, and the forward stops after the deepest layer needed.

The calibrated score (query prompt and content-free prompt, which share their document prefix)
is one forward over ``[prefix | query suffix | N/A suffix]``: both suffixes carry the positions
that follow the prefix, and the registered function lets each suffix attend to the prefix and to
itself only. No KV cache is kept, so the memory is that of one forward a few tokens longer.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from dataclasses import dataclass, field

import torch

from .errors import UsageError
from .models import LoadedModel, check_num_layers

ATTN_NAME = "corelib_sdpa"


class _StopForward(Exception):
    """Raised inside the deepest needed layer to end the forward early."""


@dataclass
class _Capture:
    rows: tuple[int, int] | None  # query-span rows within this forward's query states
    past_len: int  # tokens already in the cache before this forward
    stop_layer: int  # raise after recording this layer
    out: dict[int, torch.Tensor] = field(default_factory=dict)
    stop: bool = True  # False: record up to stop_layer, then finish the forward (decoding needs the output)


@dataclass
class _Suffix:
    span: tuple[int, int]  # where the suffix sits in the packed sequence
    rows: tuple[int, int]  # query-span rows within the suffix
    out: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class _PackedCapture:
    """One forward over ``[prefix | suffix 1 | suffix 2 ...]``, each suffix seeing the prefix and itself."""

    prefix: int
    suffixes: list[_Suffix]
    stop_layer: int
    masks: dict = field(default_factory=dict)  # per (length, window): built once per forward, not per layer


@dataclass
class _BlockCapture:
    """One forward over a sequence whose tokens belong to segments, each segment attending to the segments
    ``sees`` allows, causally by position id (the invariant prompt: header, document blocks, query suffixes)."""

    segment: torch.Tensor  # [T] segment index of each token
    positions: torch.Tensor  # [T] position id of each token
    sees: torch.Tensor  # [S, S] bool: segment a attends to segment b
    suffixes: list[_Suffix]  # the recorded segments (their rows are absolute sequence indices)
    stop_layer: int
    masks: dict = field(default_factory=dict)  # per sliding window: built once per forward

    def mask(self, window: int | None, device) -> torch.Tensor:
        if window not in self.masks:
            seg, pos = self.segment.to(device), self.positions.to(device)
            allowed = self.sees.to(device)[seg[:, None], seg[None, :]] & (pos[None, :] <= pos[:, None])
            if window is not None:
                allowed &= pos[None, :] > pos[:, None] - window
            self.masks[window] = allowed[None, None]
        return self.masks[window]


_capture: contextvars.ContextVar[_Capture | _PackedCapture | _BlockCapture | None] = contextvars.ContextVar("corelib_capture", default=None)


def query_rows_attention(query, key, mask, scaling, rows, past_len, softcap=None) -> torch.Tensor:
    """Mean attention probability of query rows to every key: [H_q, K] in float32.

    query [1, Hq, q, d] and key [1, Hkv, K, d] are post-RoPE states of one layer; ``mask`` is
    what the model passed to its attention function (None = causal, bool = allowed, float = additive).
    """
    r0, r1 = rows
    _, hq, q_len, d = query.shape
    hkv, k_len = key.shape[1], key.shape[2]
    groups = hq // hkv
    n = r1 - r0
    q = query[0, :, r0:r1].float() * scaling  # scale before the product (no fp16 overflow)
    q = q.reshape(hkv, groups * n, d)  # query head h = kv * groups + g, as repeat_kv lays them out
    logits = torch.matmul(q, key[0].float().transpose(-1, -2)).view(hq, n, k_len)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if mask is None:
        # keys end at the last position of this forward; key j sits at absolute position
        # past_len + q_len - k_len + j, query row r at past_len + r.
        q_pos = torch.arange(r0, r1, device=logits.device) + past_len
        k_pos = torch.arange(k_len, device=logits.device) + (past_len + q_len - k_len)
        allowed = k_pos[None, :] <= q_pos[:, None]
        logits = logits.masked_fill(~allowed[None], float("-inf"))
    else:
        m = mask[0, :, r0:r1, -k_len:]
        if m.dtype == torch.bool:
            logits = logits.masked_fill(~m, float("-inf"))
        else:
            logits = logits + m.float()
    probs = torch.softmax(logits, dim=-1)
    return probs.mean(dim=1)


def _causal_mask(q_len: int, k_len: int, window: int | None, device) -> torch.Tensor | None:
    """Allowed keys [1, 1, q, k] for queries at positions k_len - q_len .. k_len - 1 over keys 0 .. k_len - 1
    (causal; within ``window`` positions for a sliding-window layer, as transformers masks them).
    None for a plain causal square, which SDPA runs as ``is_causal``."""
    if window is None and q_len == k_len:
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window  # q - k < window, with no [q, k] integer temporary
    return allowed[None, None]


def _packed_attention(module, query, key, value, cap: _PackedCapture, layer, sdpa, dropout, scaling, kwargs):
    """A layer of the packed forward: the prefix rows causally over the prefix, each suffix's rows over
    the prefix and that suffix. The suffixes' query-span rows are recorded as in a cached forward."""
    kwargs = dict(kwargs)
    softcap = kwargs.pop("softcap", None)  # read by the recorded rows; the SDPA kernel has none, as in _attention_forward
    window = kwargs.get("sliding_window")
    p = cap.prefix

    def mask(q_len, k_len):
        k = (q_len, k_len, window)
        if k not in cap.masks:
            cap.masks[k] = _causal_mask(q_len, k_len, window, query.device)
        return cap.masks[k]

    def attend(q, k, v, m):
        return sdpa(module, q, k, v, m, dropout=dropout, scaling=scaling, **kwargs)[0]

    pk, pv = key[:, :, :p], value[:, :, :p]
    outs = [attend(query[:, :, :p], pk, pv, mask(p, p))]
    for suffix in cap.suffixes:
        s0, s1 = suffix.span
        k = torch.cat([pk, key[:, :, s0:s1]], dim=2)
        v = torch.cat([pv, value[:, :, s0:s1]], dim=2)
        m = mask(s1 - s0, p + s1 - s0)
        if layer is not None and layer <= cap.stop_layer:
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            suffix.out[layer] = query_rows_attention(
                query[:, :, s0:s1], k, m, scale, suffix.rows, p, softcap)
        outs.append(attend(query[:, :, s0:s1], k, v, m))
    return torch.cat(outs, dim=1), None


def _attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cap = _capture.get()
    layer = getattr(module, "layer_idx", None)
    if cap is not None and (kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None):
        raise NotImplementedError("attention sinks are not supported by corelib's extraction")
    if isinstance(cap, _BlockCapture):
        kwargs = dict(kwargs)
        softcap = kwargs.pop("softcap", None)
        m = cap.mask(kwargs.get("sliding_window"), query.device)
        if layer is not None and layer <= cap.stop_layer:
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            for suffix in cap.suffixes:
                suffix.out[layer] = query_rows_attention(query, key, m, scale, suffix.rows, 0, softcap)
            if layer == cap.stop_layer:
                raise _StopForward
        return sdpa_attention_forward(module, query, key, value, m, dropout=dropout, scaling=scaling, **kwargs)
    if isinstance(cap, _PackedCapture):
        out = _packed_attention(module, query, key, value, cap, layer, sdpa_attention_forward, dropout, scaling, kwargs)
        if layer == cap.stop_layer:
            raise _StopForward
        return out
    if cap is not None and layer is not None and layer <= cap.stop_layer:
        if cap.rows is not None:
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            cap.out[layer] = query_rows_attention(
                query, key, attention_mask, scale, cap.rows, cap.past_len, kwargs.get("softcap")
            )
        if layer == cap.stop_layer and cap.stop:
            raise _StopForward
    kwargs.pop("softcap", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _mask(*args, **kwargs):
    """transformers' SDPA mask, except in a packed forward, whose masks ``_packed_attention`` builds
    from the positions (transformers would read the restarted positions as separate sequences)."""
    from transformers.masking_utils import sdpa_mask

    if isinstance(_capture.get(), (_PackedCapture, _BlockCapture)):
        return None
    return sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if ATTN_NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTN_NAME, _attention_forward)
        AttentionMaskInterface.register(ATTN_NAME, _mask)


# The one attribute outside transformers' public API read here: which attention a model runs (set through the
# public ``set_attn_implementation``). tests/test_attention.py fails naming it if a transformers release moves it.
ATTN_ATTRIBUTE = "_attn_implementation"


def current_attention(backbone) -> str:
    """The attention implementation ``backbone`` runs (``config._attn_implementation``)."""
    try:
        return getattr(backbone.config, ATTN_ATTRIBUTE)
    except AttributeError:
        import transformers

        raise RuntimeError(f"transformers {transformers.__version__} has no config.{ATTN_ATTRIBUTE}: corelib is tested "
                           "with the versions requirements.txt pins; install those") from None


@contextlib.contextmanager
def extracting(lm: LoadedModel):
    """Run the backbone on the extracting attention (identical to SDPA when nothing is captured) inside the block,
    and give it back the attention it had on leaving: a user's model is left as it was."""
    _register()
    before = current_attention(lm.backbone)
    if before != ATTN_NAME:
        lm.backbone.set_attn_implementation(ATTN_NAME)
    try:
        yield
    finally:
        if before != ATTN_NAME and before is not None:
            lm.backbone.set_attn_implementation(before)


def _cache_kwarg(backbone) -> str:
    params = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _check_layers(lm: LoadedModel, num_layers: int | None) -> int:
    return check_num_layers(num_layers, lm.num_layers, "the layers this model has loaded")


def _run(lm: LoadedModel, ids: list[int], capture, cache=None, positions: list[int] | None = None):
    backbone = lm.backbone
    input_ids = torch.tensor([ids], device=lm.device)
    kwargs = {"use_cache": cache is not None}
    if cache is not None:
        kwargs[_cache_kwarg(backbone)] = cache
    if positions is not None:
        kwargs["position_ids"] = torch.tensor([positions], device=lm.device)
    token = _capture.set(capture)
    try:
        with extracting(lm):
            return backbone(input_ids=input_ids, **kwargs)
    except _StopForward:
        return None
    finally:
        _capture.reset(token)


def _stack(capture: _Capture | _Suffix, num_layers: int, total_len: int, heads: int) -> torch.Tensor:
    out = torch.zeros(num_layers, heads, total_len, dtype=torch.float32)
    for layer, rows in capture.out.items():
        out[layer, :, total_len - rows.shape[-1] :] = rows.cpu()  # sliding-window layers see fewer keys
    return out


@torch.inference_mode()
def head_token_scores(
    lm: LoadedModel, input_ids: list[int], query_span: tuple[int, int], num_layers: int | None = None
) -> torch.Tensor:
    """s^{l,h}_j: mean over query-span tokens of the attention to each position j.

    Returns float32 [num_layers, H, query_span[1]]; positions after the query span are not run.
    Only the first ``num_layers`` layers are computed (default: all loaded layers).
    """
    num_layers = _check_layers(lm, num_layers)
    end = query_span[1]
    cap = _Capture(rows=query_span, past_len=0, stop_layer=num_layers - 1)
    _run(lm, list(input_ids[:end]), cap)
    return _stack(cap, num_layers, end, lm.num_heads)


def shared_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.inference_mode()
def calibrated_head_token_scores(
    lm: LoadedModel,
    query_ids: list[int],
    query_span: tuple[int, int],
    na_ids: list[int],
    na_span: tuple[int, int],
    num_layers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token scores for the query prompt and the content-free ("N/A") prompt.

    The document prefix the two prompts share runs once, in one forward with both suffixes packed
    after it (each at the positions following the prefix, each attending to the prefix and itself).
    The cost is about one forward plus the two suffixes; the memory that of one forward (no cache).
    """
    num_layers = _check_layers(lm, num_layers)
    prefix = min(shared_prefix_length(query_ids, na_ids), query_span[0], na_span[0])
    if prefix == 0:
        return (
            head_token_scores(lm, query_ids, query_span, num_layers),
            head_token_scores(lm, na_ids, na_span, num_layers),
        )
    ids, positions, suffixes = list(query_ids[:prefix]), list(range(prefix)), []
    for full, (s, e) in ((query_ids, query_span), (na_ids, na_span)):
        suffixes.append(_Suffix(span=(len(ids), len(ids) + e - prefix), rows=(s - prefix, e - prefix)))
        ids += full[prefix:e]
        positions += range(prefix, e)
    _run(lm, ids, _PackedCapture(prefix, suffixes, num_layers - 1), positions=positions)
    return tuple(_stack(x, num_layers, e, lm.num_heads) for x, (_, e) in zip(suffixes, (query_span, na_span)))


@torch.inference_mode()
def invariant_head_token_scores(lm: LoadedModel, prompt, na_prompt=None, num_layers: int | None = None):
    """Token scores of a permutation-invariant prompt (``prompts.build_invariant_prompt``): [L, H, T] over its
    sequence, and with ``na_prompt`` (the same documents with the content-free query) the N/A prompt's too,
    from one forward: the N/A suffix follows the query suffix at the same positions and sees the header and the
    blocks, not the query. Sequence index j of either result is token j of ``prompt`` up to its last block."""
    num_layers = _check_layers(lm, num_layers)
    blocks = prompt.blocks
    if na_prompt is not None and (na_prompt.blocks != blocks or na_prompt.input_ids[: blocks[-1][1]] != prompt.input_ids[: blocks[-1][1]]):
        raise UsageError("the N/A prompt's header and blocks differ from the query prompt's")
    body = blocks[-1][1] if blocks else prompt.query_span[0]
    header = blocks[0][0] if blocks else body
    ids, positions = list(prompt.input_ids), list(prompt.positions)
    segment = [0] * header
    for b, (s0, s1) in enumerate(blocks, start=1):
        segment += [b] * (s1 - s0)
    q_seg = len(blocks) + 1
    segment += [q_seg] * (len(ids) - body)
    suffixes = [_Suffix(span=(body, len(ids)), rows=prompt.query_span)]
    if na_prompt is not None:
        na_tail = na_prompt.input_ids[body:]
        s0 = len(ids)
        ids += na_tail
        positions += na_prompt.positions[body:]
        segment += [q_seg + 1] * len(na_tail)
        suffixes.append(_Suffix(span=(s0, len(ids)), rows=(s0 + na_prompt.query_span[0] - body, s0 + na_prompt.query_span[1] - body)))
    n_seg = q_seg + 2
    sees = torch.eye(n_seg, dtype=torch.bool)
    sees[:, 0] = True  # every segment sees the header
    sees[q_seg, 1:q_seg] = True  # the query sees every block
    sees[q_seg + 1, 1:q_seg] = True  # and so does the N/A query
    cap = _BlockCapture(torch.tensor(segment), torch.tensor(positions), sees, suffixes, num_layers - 1)
    _run(lm, ids, cap, positions=positions)
    out = [_stack(x, num_layers, len(ids), lm.num_heads)[..., :body] for x in suffixes]
    return out if na_prompt is not None else out[0]


# ----------------------------------------------------------------------------- decoding (NIAH detection)


def new_cache(lm: LoadedModel):
    from transformers import DynamicCache

    return DynamicCache(config=lm.backbone.config)


@torch.inference_mode()
def prefill(lm: LoadedModel, ids: list[int], cache) -> None:
    """Run ``ids`` into ``cache`` (every layer's keys and values; nothing recorded, no output)."""
    _run(lm, list(ids), _Capture(rows=None, past_len=0, stop_layer=lm.num_layers - 1), cache)


@torch.inference_mode()
def step_attention(lm: LoadedModel, token: int, cache, past_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step on ``cache`` (holding ``past_len`` tokens): the new token's last hidden
    state [d] and every head's attention row from it over all ``past_len + 1`` positions [L, H, K].
    Only that one row is computed per head (no [H, T, T] tensor)."""
    cap = _Capture(rows=(0, 1), past_len=past_len, stop_layer=lm.num_layers - 1, stop=False)
    out = _run(lm, [token], cap, cache)
    return out.last_hidden_state[0, -1], _stack(cap, lm.num_layers, past_len + 1, lm.num_heads)
