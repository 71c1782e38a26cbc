"""KV-cache quantization and noise, applied to what each attention layer stores in its cache.

    description = install_kv_cache_transform(model, bits=4, group_size=-1, noise_std=None, seed=0)
    remove_kv_cache_transform(model)

The transform receives exactly the tensors that an attention layer passes to
``Cache.update(key_states, value_states, layer_idx, ...)``: keys after the rotary
embedding and values, each [batch, kv_heads, seq, head_dim]. With ``bits`` set, each
token's head is quantized with asymmetric round-to-nearest in groups of ``group_size``
channels (-1: the whole head), which is the KV-cache setting of Li et al. 2024,
"Evaluating Quantized Large Language Models". With ``noise_std`` set, seeded Gaussian
noise is added to every stored key and value, after the quantization if both are set.

No attention class is copied per architecture. Instead, a forward pre-hook on each
attention module replaces the module's cache argument with a ``TransformingCache``. Its
``update`` transforms the new keys and values and then passes them to the real cache,
which stores the transformed tensors (generation, or a forward with ``use_cache=True``).
With no cache (``use_cache=False``), the hook still passes a wrapper, whose ``update``
returns the transformed tensors and stores nothing. Inside ``layers.reference_mode(model)``
the hook leaves the arguments untouched, so the model computes exactly as it did before
installation.

NOTE: the quantizer is ``quantizer.fake_quantize``, which widens each group's range to
include 0. Groups of keys or values whose channels all have one sign thus get a coarser
grid than a plain min-max quantizer would give them, which is more likely the smaller
``group_size`` is.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lcc_models.compression.blocks import find_decoder_blocks
from lcc_models.compression.layers import KV_TRANSFORM_ATTRIBUTE
from lcc_models.compression.quantizer import fake_quantize
from lcc_models.spec import KV_BITS_RANGE, ModelArgumentError

logger = logging.getLogger(__name__)

# Names of the cache argument of attention forward(), newest first. transformers 5.25 names
# it ``cache`` (and still maps ``past_key_values`` onto it). Older releases used the other two.
CACHE_PARAMETER_NAMES = ("cache", "past_key_values", "past_key_value")

# Tokens in the probe forward that checks every hooked module reaches Cache.update.
PROBE_TOKENS = 4


@dataclass
class KVCacheTransform:
    """Quantization and noise settings of one attention module, and its cache-argument hook.

    ``layers.reference_mode`` sets ``use_reference``, and while it is True the hook leaves
    the cache argument as it is. ``update_calls`` counts calls of
    ``TransformingCache.update``, which the probe forward checks.
    """

    bits: int | None
    group_size: int
    noise_std: float
    seed: int
    cache_parameter: str
    cache_position: int | None
    module_name: str
    use_reference: bool = False
    update_calls: int = 0
    hook_handle: RemovableHandle | None = field(default=None, repr=False)

    def replace_cache_argument(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        """Forward pre-hook: wrap the module's cache argument (possibly None) in a ``TransformingCache``."""
        if self.use_reference:
            return None
        position = self.cache_position
        if position is not None and len(args) > position:
            wrapper = TransformingCache(args[position], self)
            return (*args[:position], wrapper, *args[position + 1 :]), kwargs

        # A caller may still pass the cache under an older name, which transformers'
        # deprecate_kwarg maps to the current one, so take it from there as well.
        passed = [kwargs.pop(name) for name in CACHE_PARAMETER_NAMES if name in kwargs]
        cache = next((value for value in passed if value is not None), None)
        kwargs[self.cache_parameter] = TransformingCache(cache, self)
        return args, kwargs

    def apply(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, offset: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize, then add noise to, the new keys and values of layer ``layer_idx``.

        ``offset`` is the position of the first new token: the cache's length before this
        update, or 0 without a cache. It seeds the noise with ``seed`` and ``layer_idx``.

        NOTE: one draw covers the whole [batch, kv_heads, seq, head_dim] tensor, so a token's
        noise also depends on the batch shape and on how the sequence is split into calls.
        """
        if self.bits is not None:
            key_states = self._quantize(key_states, "keys", layer_idx)
            value_states = self._quantize(value_states, "values", layer_idx)
        if self.noise_std > 0:
            generator = torch.Generator(device=key_states.device)
            generator.manual_seed(noise_seed(self.seed, layer_idx, offset))
            key_states = add_gaussian_noise(key_states, self.noise_std, generator)
            value_states = add_gaussian_noise(value_states, self.noise_std, generator)
        return key_states, value_states

    def _quantize(self, states: torch.Tensor, kind: str, layer_idx: int) -> torch.Tensor:
        width = states.shape[-1]
        if self.group_size != -1 and width % self.group_size:
            # The install-time check uses the config's head_dim. Some attention layers
            # store tensors of another width (latent attention caches a compressed vector).
            raise ModelArgumentError(
                f"invalid kv_group_size={self.group_size}: it does not divide the width {width} of the {kind} "
                f"that {self.module_name} (layer {layer_idx}) stores in its KV cache. "
                f"Use one of {', '.join(map(str, divisors(width)))}, or -1 for one group per head"
            )
        return fake_quantize(states, self.bits, self.group_size, symmetric=False)


class TransformingCache:
    """Stand-in for the cache argument of one attention call that transforms what gets stored.

    ``update`` transforms the new keys and values, then stores them in ``wrapped_cache``
    and returns what that cache returns, or, when ``wrapped_cache`` is None, returns the
    transformed tensors. Every other attribute is read from and written to the wrapped cache.
    """

    def __init__(self, wrapped_cache: Any, transform: KVCacheTransform) -> None:
        # A cache that is already wrapped (by the hook of an enclosing module) is unwrapped,
        # so one update never runs two transforms.
        if isinstance(wrapped_cache, TransformingCache):
            wrapped_cache = wrapped_cache.wrapped_cache
        object.__setattr__(self, "wrapped_cache", wrapped_cache)
        object.__setattr__(self, "transform", transform)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform the new keys and values, store them if there is a cache, and return what attention uses."""
        self.transform.update_calls += 1
        cache = self.wrapped_cache
        offset = 0
        if cache is not None and self.transform.noise_std > 0:
            offset = int(cache.get_seq_length(layer_idx))
        key_states, value_states = self.transform.apply(key_states, value_states, layer_idx, offset)
        if cache is None:
            return key_states, value_states
        return cache.update(key_states, value_states, layer_idx, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Called only for names not found on the wrapper itself.
        cache = object.__getattribute__(self, "wrapped_cache")
        if cache is None:
            raise AttributeError(
                f"{name!r}: the attention module was called without a KV cache, so the KV-cache "
                f"transform's wrapper has only update()"
            )
        return getattr(cache, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if self.wrapped_cache is None:
            raise AttributeError(f"cannot set {name!r}: the attention module was called without a KV cache")
        setattr(self.wrapped_cache, name, value)

    def __len__(self) -> int:
        return len(self.wrapped_cache)

    def __getitem__(self, index: Any) -> Any:
        return self.wrapped_cache[index]

    def __iter__(self):
        return iter(self.wrapped_cache)

    def __bool__(self) -> bool:
        # Without a cache the wrapper must still read as present, so attention calls update().
        return True if self.wrapped_cache is None else bool(self.wrapped_cache)

    def __repr__(self) -> str:
        return f"TransformingCache({self.wrapped_cache!r})"


def install_kv_cache_transform(
    model: nn.Module, *, bits: int | None, group_size: int = -1, noise_std: float | None = None, seed: int = 0
) -> dict:
    """Hook KV-cache quantization and/or noise into every attention module of ``model``.

    Checks the arguments, hooks the attention modules of the decoder blocks and runs a
    probe forward of a few tokens to confirm that each of them stores its keys and values
    through ``Cache.update``. Raises ``ModelArgumentError`` when an argument is invalid or
    the model cannot be reached this way (no hooks remain then), and ``RuntimeError`` when
    a transform is already installed. The model's weights are not modified.

    Returns a JSON-serializable description: the number and class of the hooked attention
    modules, the cache argument's name, head_dim, bits, group size, noise and seed.
    """
    noise = check_kv_arguments(bits, group_size, noise_std, seed)
    if any(hasattr(module, KV_TRANSFORM_ATTRIBUTE) for module in model.modules()):
        raise RuntimeError(
            "a KV-cache transform is already installed on this model. Call remove_kv_cache_transform(model) first"
        )

    attention_modules = find_attention_modules(model)
    if not attention_modules:
        raise ModelArgumentError(
            f"kv_bits / kv_noise_std cannot be applied to {describe_model(model)}: no attention module was found "
            f"in its decoder blocks. These options need attention modules with a layer_idx attribute whose "
            f"forward() takes the KV cache as {' or '.join(CACHE_PARAMETER_NAMES)} and stores keys and values "
            f"through the transformers cache interface (Cache.update)"
        )
    head_dim = config_head_dim(model, attention_modules[0][1])
    check_group_size(group_size, head_dim, model)

    transforms = []
    for name, module in attention_modules:
        parameter, position = cache_parameter(module)
        transform = KVCacheTransform(bits, group_size, noise, seed, parameter, position, name)
        transform.hook_handle = module.register_forward_pre_hook(transform.replace_cache_argument, with_kwargs=True)
        setattr(module, KV_TRANSFORM_ATTRIBUTE, transform)
        transforms.append(transform)

    try:
        run_probe_forward(model)
    except BaseException:
        remove_kv_cache_transform(model)
        raise
    unreached = [transform.module_name for transform in transforms if transform.update_calls == 0]
    if unreached:
        remove_kv_cache_transform(model)
        raise ModelArgumentError(
            f"kv_bits / kv_noise_std cannot be applied to {describe_model(model)}: in a probe forward, "
            f"{len(unreached)} of {len(transforms)} attention modules ({', '.join(unreached[:3])}"
            f"{', ...' if len(unreached) > 3 else ''}) did not call update() on their KV cache. These options need "
            f"attention that stores keys and values through the transformers cache interface (Cache.update)"
        )
    for transform in transforms:
        transform.update_calls = 0

    description = {
        "attention_modules": len(transforms),
        "attention_class": sorted({type(module).__name__ for _, module in attention_modules}),
        "cache_argument": transforms[0].cache_parameter,
        "head_dim": head_dim,
        "kv_bits": bits,
        "kv_group_size": group_size,
        "kv_noise_std": noise_std,
        "seed": seed,
    }
    logger.info("KV-cache transform installed: %s", description)
    return description


def remove_kv_cache_transform(model: nn.Module) -> int:
    """Remove the KV-cache hooks and transforms from ``model`` and return the number of modules that had one."""
    removed = 0
    for module in model.modules():
        transform = getattr(module, KV_TRANSFORM_ATTRIBUTE, None)
        if transform is None:
            continue
        if transform.hook_handle is not None:
            transform.hook_handle.remove()
        delattr(module, KV_TRANSFORM_ATTRIBUTE)
        removed += 1
    return removed


def check_kv_arguments(bits: int | None, group_size: int, noise_std: float | None, seed: int) -> float:
    """Raise ``ModelArgumentError`` on an invalid value, and return ``noise_std`` as a float (0.0 for None)."""
    low, high = KV_BITS_RANGE
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high):
        raise ModelArgumentError(f"invalid kv_bits={bits!r}: use an integer from {low} to {high}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or (group_size != -1 and group_size < 1):
        raise ModelArgumentError(
            f"invalid kv_group_size={group_size!r}: use a positive divisor of head_dim, or -1 for one group per head"
        )
    if noise_std is not None:
        is_number = isinstance(noise_std, (int, float)) and not isinstance(noise_std, bool)
        if not is_number or not math.isfinite(noise_std) or noise_std < 0:
            raise ModelArgumentError(f"invalid kv_noise_std={noise_std!r}: use a finite float >= 0")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ModelArgumentError(f"invalid seed={seed!r}: use an integer")
    if bits is None and noise_std is None:
        raise ValueError("install_kv_cache_transform got neither bits nor noise_std. Set at least one of them")
    return float(noise_std or 0.0)


def check_group_size(group_size: int, head_dim: int, model: nn.Module) -> None:
    """Raise ``ModelArgumentError`` unless ``group_size`` is -1 or divides ``head_dim``."""
    if group_size == -1 or head_dim % group_size == 0:
        return
    raise ModelArgumentError(
        f"invalid kv_group_size={group_size}: it does not divide head_dim={head_dim} of {describe_model(model)}. "
        f"Accepted values: {', '.join(map(str, divisors(head_dim)))}, or -1 for one group per head"
    )


def find_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return the qualified names and modules of the attention layers in the decoder blocks.

    An attention layer is a module with a ``layer_idx`` attribute whose forward() takes a
    cache argument (one of ``CACHE_PARAMETER_NAMES``). Where such modules are nested (a
    decoder block that also has ``layer_idx`` and takes the cache), only the innermost
    ones are kept, since those are the ones that call ``Cache.update``.
    """
    try:
        blocks_name, blocks = find_decoder_blocks(model)
    except ValueError:
        return []
    candidates = [
        (f"{blocks_name}.{name}" if name else blocks_name, module)
        for name, module in blocks.named_modules()
        if hasattr(module, "layer_idx") and cache_parameter(module)[0] is not None
    ]
    candidate_ids = {id(module) for _, module in candidates}
    innermost = []
    for name, module in candidates:
        inner = [child for child in module.modules() if child is not module and id(child) in candidate_ids]
        if not inner:
            innermost.append((name, module))
    return innermost


def cache_parameter(module: nn.Module) -> tuple[str | None, int | None]:
    """Return the name of the cache parameter of ``module.forward`` and its position, or (None, None)."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None, None
    names = [parameter.name for parameter in parameters]
    for name in CACHE_PARAMETER_NAMES:
        if name not in names:
            continue
        index = names.index(name)
        positional = parameters[index].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        return name, index if positional else None
    return None, None


def config_head_dim(model: nn.Module, attention: nn.Module) -> int:
    """Return head_dim from the model's (text) config, or from the attention module's ``head_dim``."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    head_dim = getattr(text_config, "head_dim", None)
    if not head_dim:
        hidden_size = getattr(text_config, "hidden_size", None)
        num_heads = getattr(text_config, "num_attention_heads", None)
        if hidden_size and num_heads:
            head_dim = hidden_size // num_heads
    if not head_dim:
        head_dim = getattr(attention, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ModelArgumentError(
            f"kv_bits / kv_noise_std cannot be applied to {describe_model(model)}: its config has neither head_dim "
            f"nor hidden_size and num_attention_heads, and its attention module has no head_dim attribute"
        )
    return head_dim


def run_probe_forward(model: nn.Module) -> None:
    """Run ``model`` on ``PROBE_TOKENS`` tokens without a cache, on the device of its input embeddings."""
    device = input_device(model)
    config = getattr(model, "config", None)
    vocab_size = getattr(getattr(config, "text_config", None) or config, "vocab_size", None) or PROBE_TOKENS + 1
    input_ids = (torch.arange(1, PROBE_TOKENS + 1, device=device) % vocab_size).unsqueeze(0)
    try:
        forward_parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        forward_parameters = {}
    kwargs = {"use_cache": False} if "use_cache" in forward_parameters else {}
    with torch.no_grad():
        model(input_ids=input_ids, **kwargs)


def input_device(model: nn.Module) -> torch.device:
    """Return the device of the input embeddings, which receive the input ids (even under a device_map)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(model.parameters()).device


def noise_seed(seed: int, layer_idx: int, offset: int) -> int:
    """Return a generator seed derived from the run's seed, the layer and the first new token's position."""
    digest = hashlib.blake2b(f"{seed}:{layer_idx}:{offset}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def add_gaussian_noise(states: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, std^2) noise drawn in float32 from ``generator`` and return the sum in the input dtype."""
    noise = torch.randn(states.shape, generator=generator, device=states.device, dtype=torch.float32)
    return (states.float() + std * noise).to(states.dtype)


def divisors(width: int) -> list[int]:
    return [size for size in range(1, width + 1) if width % size == 0]


def describe_model(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    name = type(model).__name__
    return f"{name} (model_type {model_type!r})" if model_type else name
