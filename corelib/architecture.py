"""Architecture facts a study needs besides the layer and head counts: which layers see the whole prompt.

Read from a model's config (a ``ModelSpec`` without loading weights, or a loaded model's backbone).
"""

from __future__ import annotations


def model_config(model):
    return model.config() if hasattr(model, "config") and callable(model.config) else model.backbone.config


def global_attention_layers(model) -> list[int] | None:
    """The layers that attend over the whole context, where a model mixes in sliding-window layers
    (gemma3: 3 of 18 layers are global); None when every layer is global or the config says nothing."""
    types = getattr(model_config(model), "layer_types", None)
    if not types or all(t == "full_attention" for t in types):
        return None
    return [l for l, t in enumerate(types[: model.num_layers]) if t == "full_attention"]


def global_attention_heads(model) -> list[tuple[int, int]] | None:
    """The heads of ``global_attention_layers`` (None where every layer is global)."""
    layers = global_attention_layers(model)
    return None if layers is None else [(l, h) for l in layers for h in range(model.num_heads)]
