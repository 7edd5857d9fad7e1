"""Query-span attention extraction through transformers' attention-function registry.

A function registered as ``corelib_sdpa`` receives each layer's post-RoPE query and key states,
computes the softmax rows of the query-span tokens only (fp32, scaled before the product, GQA
keys shared rather than copied) and then hands the layer to the stock SDPA implementation.
No [H, T, T] tensor is ever built, and the forward stops after the deepest layer needed.
"""

from __future__ import annotations

import contextvars
import inspect
from dataclasses import dataclass, field

import torch

from .models import LoadedModel

ATTN_NAME = "corelib_sdpa"


class _StopForward(Exception):
    """Raised inside the deepest needed layer to end the forward early."""


@dataclass
class _Capture:
    rows: tuple[int, int] | None  # query-span rows within this forward's query states
    past_len: int  # tokens already in the cache before this forward
    stop_layer: int  # raise after recording this layer
    out: dict[int, torch.Tensor] = field(default_factory=dict)


_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("corelib_capture", default=None)


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


def _attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cap = _capture.get()
    layer = getattr(module, "layer_idx", None)
    if cap is not None and layer is not None and layer <= cap.stop_layer:
        if cap.rows is not None:
            if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
                raise NotImplementedError("attention sinks are not supported by corelib's extraction")
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            cap.out[layer] = query_rows_attention(
                query, key, attention_mask, scale, cap.rows, cap.past_len, kwargs.get("softcap")
            )
        if layer == cap.stop_layer:
            raise _StopForward
    kwargs.pop("softcap", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if ATTN_NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ATTN_NAME, _attention_forward)
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def prepare(lm: LoadedModel) -> None:
    """Switch the backbone to the extracting attention (identical to SDPA when nothing is captured)."""
    _register()
    if lm.backbone.config._attn_implementation != ATTN_NAME:
        lm.backbone.set_attn_implementation(ATTN_NAME)


def _cache_kwarg(backbone) -> str:
    params = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _check_layers(lm: LoadedModel, num_layers: int | None) -> int:
    num_layers = lm.num_layers if num_layers is None else num_layers
    if not 1 <= num_layers <= lm.num_layers:
        raise ValueError(f"num_layers={num_layers} is outside 1..{lm.num_layers}, the layers this model has loaded")
    return num_layers


def _run(lm: LoadedModel, ids: list[int], capture: _Capture, cache=None) -> None:
    backbone = lm.backbone
    input_ids = torch.tensor([ids], device=lm.device)
    kwargs = {"use_cache": cache is not None}
    if cache is not None:
        kwargs[_cache_kwarg(backbone)] = cache
    token = _capture.set(capture)
    try:
        backbone(input_ids=input_ids, **kwargs)
    except _StopForward:
        pass
    finally:
        _capture.reset(token)


def _stack(capture: _Capture, num_layers: int, total_len: int, heads: int) -> torch.Tensor:
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
    prepare(lm)
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

    The document prefix the two prompts share is run once into a KV cache; the query suffix runs
    on it, the cache is cropped back to the prefix, and the N/A suffix runs on it. The cost is
    about one forward plus two suffixes, and the memory one prefix cache (not two copies).
    Sliding-window layers (gemma3) record the suffix so that cropping restores their window.
    """
    from transformers import DynamicCache

    num_layers = _check_layers(lm, num_layers)
    prepare(lm)
    prefix = min(shared_prefix_length(query_ids, na_ids), query_span[0], na_span[0])
    if prefix == 0:
        return (
            head_token_scores(lm, query_ids, query_span, num_layers),
            head_token_scores(lm, na_ids, na_span, num_layers),
        )
    cache = DynamicCache(config=lm.backbone.config)
    _run(lm, list(query_ids[:prefix]), _Capture(rows=None, past_len=0, stop_layer=num_layers - 1), cache)
    for layer in getattr(cache, "layers", []):
        if hasattr(layer, "activate_past_recording"):
            layer.activate_past_recording()
    results = []
    for n, (ids, (s, e)) in enumerate(((query_ids, query_span), (na_ids, na_span))):
        if n:
            cache.crop(-(query_span[1] - prefix))  # back to the shared prefix
        cap = _Capture(rows=(s - prefix, e - prefix), past_len=prefix, stop_layer=num_layers - 1)
        _run(lm, list(ids[prefix:e]), cap, cache)
        results.append(_stack(cap, num_layers, e, lm.num_heads))
    return results[0], results[1]
