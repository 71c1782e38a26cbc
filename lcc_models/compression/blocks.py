"""Lookup of a causal LM's decoder blocks that works without naming the architecture."""

from __future__ import annotations

from torch import nn


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return the qualified name and the ``nn.ModuleList`` of the model's decoder blocks."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    num_layers = getattr(text_config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if num_layers is not None and len(module) != num_layers:
            continue
        if any(isinstance(child, nn.Linear) for child in module[0].modules()):
            return name, module
    raise ValueError(
        f"could not find the decoder blocks of {type(model).__name__}: expected an nn.ModuleList of "
        f"{num_layers} blocks containing nn.Linear layers"
    )
