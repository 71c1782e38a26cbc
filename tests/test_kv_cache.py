"""KV-cache quantization and noise: the hand-computed definition, the stored cache, reference mode, errors.

Every model here is a tiny random LLaMA (hidden 64, 2 layers, 4 query heads, 2 key/value
heads, so attention is grouped-query) built from its config, with no download.
"""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from lcc_models.compression.kv_cache import (
    TransformingCache,
    install_kv_cache_transform,
    remove_kv_cache_transform,
)
from lcc_models.compression.layers import KV_TRANSFORM_ATTRIBUTE, reference_mode
from lcc_models.compression.quantizer import fake_quantize
from lcc_models.spec import ModelArgumentError

HEAD_DIM = 16
SEQ_LEN = 12


def tiny_config(config_class=LlamaConfig, attn_implementation: str = "sdpa", kv_heads: int = 2):
    return config_class(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        attn_implementation=attn_implementation,
    )


def tiny_model(attn_implementation: str = "sdpa", kv_heads: int = 2, dtype=torch.float32, config_class=LlamaConfig):
    """Build the same random model for the same arguments, with weights large enough to matter."""
    torch.manual_seed(0)
    model_class = MistralForCausalLM if config_class is MistralConfig else LlamaForCausalLM
    model = model_class(tiny_config(config_class, attn_implementation, kv_heads))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.2)
    return model.to(dtype).eval()


def input_ids(length: int = SEQ_LEN) -> torch.Tensor:
    return torch.randint(0, 100, (1, length), generator=torch.Generator().manual_seed(1))


def logits(model, ids: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids() if ids is None else ids, use_cache=False, **kwargs).logits


def cache_argument(model) -> str:
    """Return the name under which this transformers version's model forward() takes the cache."""
    names = inspect.signature(model.forward).parameters
    return next(name for name in ("cache", "past_key_values") if name in names)


def forward_with_cache(model, ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=True, **{cache_argument(model): cache}).logits


def max_levels_per_group(states: torch.Tensor, group_size: int) -> int:
    """Return the largest number of distinct values in one (token, head, group) of [batch, heads, seq, head_dim]."""
    groups = states.reshape(-1, group_size)
    return max(torch.unique(group).numel() for group in groups)


# --- weights and the definition ---------------------------------------------------------------


def test_install_leaves_weights_untouched():
    model = tiny_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    install_kv_cache_transform(model, bits=2, group_size=8, noise_std=0.1)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_attention_matches_hand_computation(attn_implementation):
    bits, group_size = 3, 8
    model = tiny_model(attn_implementation)
    install_kv_cache_transform(model, bits=bits, group_size=group_size)
    attention = model.model.layers[0].self_attn
    captured = {}

    def capture(module, args, kwargs, output):
        captured["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        captured["output"] = output[0]

    handle = attention.register_forward_hook(capture, with_kwargs=True)
    logits(model)
    handle.remove()

    hidden = captured["hidden"]
    batch, length, _ = hidden.shape
    with torch.no_grad():
        query = attention.q_proj(hidden).view(batch, length, -1, HEAD_DIM).transpose(1, 2)
        key = attention.k_proj(hidden).view(batch, length, -1, HEAD_DIM).transpose(1, 2)
        value = attention.v_proj(hidden).view(batch, length, -1, HEAD_DIM).transpose(1, 2)
        cos, sin = model.model.rotary_emb(hidden, torch.arange(length).unsqueeze(0))
        query, key = apply_rotary_pos_emb(query, key, cos, sin)

        def attend(key, value):
            repeats = query.shape[1] // key.shape[1]
            key = key.repeat_interleave(repeats, dim=1)
            value = value.repeat_interleave(repeats, dim=1)
            scores = query @ key.transpose(-1, -2) / HEAD_DIM**0.5
            future = torch.ones(length, length, dtype=torch.bool).triu(1)
            probabilities = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
            heads = (probabilities @ value).transpose(1, 2).reshape(batch, length, -1)
            return attention.o_proj(heads)

        expected = attend(fake_quantize(key, bits, group_size, False), fake_quantize(value, bits, group_size, False))
        unquantized = attend(key, value)

    assert query.shape[1] == 4
    assert key.shape[1] == 2
    torch.testing.assert_close(captured["output"], expected, rtol=1e-5, atol=1e-5)
    assert (captured["output"] - unquantized).abs().max() > 1e-3


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_low_bits_change_output(bits):
    model = tiny_model()
    baseline = logits(model)
    install_kv_cache_transform(model, bits=bits)
    assert (logits(model) - baseline).abs().max() > 1e-2


def test_8_bits_stay_close():
    model = tiny_model()
    baseline = logits(model)
    install_kv_cache_transform(model, bits=8)
    eight_bit = logits(model)
    remove_kv_cache_transform(model)
    install_kv_cache_transform(model, bits=2)
    two_bit_error = (logits(model) - baseline).abs().max()
    eight_bit_error = (eight_bit - baseline).abs().max()
    assert eight_bit_error > 0
    assert eight_bit_error < 0.05 * two_bit_error
    torch.testing.assert_close(eight_bit, baseline, rtol=0, atol=0.02 * baseline.abs().max().item())


# --- noise ------------------------------------------------------------------------------------


def test_zero_noise_is_exact():
    model = tiny_model()
    baseline = logits(model)
    install_kv_cache_transform(model, bits=None, noise_std=0.0)
    assert torch.equal(logits(model), baseline)


def test_noise_changes_output():
    model = tiny_model()
    baseline = logits(model)
    install_kv_cache_transform(model, bits=None, noise_std=0.05)
    assert (logits(model) - baseline).abs().max() > 1e-3


def test_noise_same_seed_reproduces():
    first, second = tiny_model(), tiny_model()
    install_kv_cache_transform(first, bits=None, noise_std=0.05, seed=7)
    install_kv_cache_transform(second, bits=None, noise_std=0.05, seed=7)
    noisy = logits(first)
    assert torch.equal(logits(first), noisy)
    assert torch.equal(logits(second), noisy)


def test_noise_different_seed_differs():
    first, second = tiny_model(), tiny_model()
    install_kv_cache_transform(first, bits=None, noise_std=0.05, seed=7)
    install_kv_cache_transform(second, bits=None, noise_std=0.05, seed=8)
    assert not torch.equal(logits(first), logits(second))


def test_noise_leaves_global_rng_alone():
    model = tiny_model()
    install_kv_cache_transform(model, bits=None, noise_std=0.05)
    torch.manual_seed(3)
    logits(model)
    after_forward = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(1), after_forward)


def test_noise_added_after_quantization():
    std, bits = 0.05, 3
    ids = input_ids()
    plain_cache = DynamicCache(config=tiny_config())
    forward_with_cache(tiny_model(), ids, plain_cache)
    # Layer 0 receives the same input with or without the transform, so these are its unquantized keys.
    expected_keys = fake_quantize(plain_cache.layers[0].keys, bits, -1, False)
    expected_values = fake_quantize(plain_cache.layers[0].values, bits, -1, False)

    model = tiny_model()
    install_kv_cache_transform(model, bits=bits, noise_std=std)
    cache = DynamicCache(config=model.config)
    forward_with_cache(model, ids, cache)

    for stored, expected in ((cache.layers[0].keys, expected_keys), (cache.layers[0].values, expected_values)):
        noise = stored - expected
        assert abs(noise.mean().item()) < 0.3 * std
        assert 0.85 * std < noise.std().item() < 1.15 * std


# --- reference mode ---------------------------------------------------------------------------


def test_reference_mode_is_exact():
    model = tiny_model()
    baseline = logits(model)
    install_kv_cache_transform(model, bits=2, group_size=4, noise_std=0.1)
    transformed = logits(model)
    with reference_mode(model):
        assert torch.equal(logits(model), baseline)
    assert torch.equal(logits(model), transformed)


# --- the stored cache -------------------------------------------------------------------------


# Every case has more channels per group than 2^bits levels, so the bound can fail.
@pytest.mark.parametrize("bits,group_size", [(2, -1), (2, 8), (3, 16)])
def test_forward_cache_stores_quantized_levels(bits, group_size):
    model = tiny_model()
    install_kv_cache_transform(model, bits=bits, group_size=group_size)
    cache = DynamicCache(config=model.config)
    forward_with_cache(model, input_ids(), cache)
    width = HEAD_DIM if group_size == -1 else group_size
    for layer in cache.layers:
        assert layer.keys.shape == (1, 2, SEQ_LEN, HEAD_DIM)
        assert max_levels_per_group(layer.keys, width) <= 2**bits
        assert max_levels_per_group(layer.values, width) <= 2**bits


def test_generate_cache_stores_quantized_levels():
    bits, new_tokens = 2, 3
    model = tiny_model()
    install_kv_cache_transform(model, bits=bits, group_size=8)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model.generate(
            input_ids(), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **{cache_argument(model): cache}
        )
    for layer in cache.layers:
        # The last generated token is returned but never fed back, so it has no cache entry.
        assert layer.keys.shape[-2] == SEQ_LEN + new_tokens - 1
        assert max_levels_per_group(layer.keys, 8) <= 2**bits
        assert max_levels_per_group(layer.values, 8) <= 2**bits


def test_cached_forward_matches_uncached():
    model = tiny_model()
    install_kv_cache_transform(model, bits=3, group_size=8, noise_std=0.02)
    cached = forward_with_cache(model, input_ids(), DynamicCache(config=model.config))
    torch.testing.assert_close(cached, logits(model), rtol=1e-5, atol=1e-5)


def test_decode_step_reads_transformed_cache():
    # Quantization is per token, so prefill plus one decode step must give the full
    # forward's last logits, but only if the cache stored the quantized prefix.
    model = tiny_model()
    install_kv_cache_transform(model, bits=3, group_size=8)
    ids = input_ids()
    cache = DynamicCache(config=model.config)
    forward_with_cache(model, ids[:, :-1], cache)
    decoded = forward_with_cache(model, ids[:, -1:], cache)
    full = logits(model, ids)
    torch.testing.assert_close(decoded[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)

    with reference_mode(model):
        unquantized_last = logits(model, ids)[:, -1]
    assert (decoded[:, -1] - unquantized_last).abs().max() > 1e-3


# --- models and dtypes ------------------------------------------------------------------------


def test_gqa_description():
    model = tiny_model(kv_heads=2)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    description = install_kv_cache_transform(model, bits=4, group_size=8, noise_std=0.01, seed=3)
    assert json.loads(json.dumps(description)) == description
    assert description["attention_modules"] == 2
    assert description["attention_class"] == ["LlamaAttention"]
    assert description["head_dim"] == HEAD_DIM
    assert description["kv_bits"] == 4
    assert description["kv_group_size"] == 8
    assert description["kv_noise_std"] == 0.01
    assert description["seed"] == 3
    assert description["cache_argument"] in ("cache", "past_key_values", "past_key_value")


@pytest.mark.parametrize("kv_heads,config_class", [(4, LlamaConfig), (2, MistralConfig)])
def test_other_models_change_and_restore(kv_heads, config_class):
    model = tiny_model(kv_heads=kv_heads, config_class=config_class)
    baseline = logits(model)
    install_kv_cache_transform(model, bits=2)
    assert (logits(model) - baseline).abs().max() > 1e-2
    with reference_mode(model):
        assert torch.equal(logits(model), baseline)


def test_layer_offloaded_by_device_map(tmp_path):
    # A CPU-only stand-in for a device_map spread: accelerate's hooks move layer 1's
    # weights in from disk at each call, as they move layers between GPUs.
    accelerate = pytest.importorskip("accelerate")
    expected_model = tiny_model()
    install_kv_cache_transform(expected_model, bits=2, group_size=8, noise_std=0.05)
    expected = logits(expected_model)

    model = tiny_model()
    baseline = logits(model)
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    model = accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    install_kv_cache_transform(model, bits=2, group_size=8, noise_std=0.05)
    assert torch.equal(logits(model), expected)
    with reference_mode(model):
        assert torch.equal(logits(model), baseline)


def test_bfloat16_model():
    model = tiny_model(dtype=torch.bfloat16)
    baseline = logits(model)
    install_kv_cache_transform(model, bits=2, group_size=8, noise_std=0.05)
    transformed = logits(model)
    assert transformed.dtype == torch.bfloat16
    assert not torch.equal(transformed, baseline)
    cache = DynamicCache(config=model.config)
    forward_with_cache(model, input_ids(), cache)
    assert cache.layers[0].keys.dtype == torch.bfloat16
    with reference_mode(model):
        assert torch.equal(logits(model), baseline)


# --- installation errors ----------------------------------------------------------------------


class ToyAttention(nn.Module):
    """Attention stand-in that takes a cache argument but never calls its update()."""

    def __init__(self, width: int, layer_idx: int | None) -> None:
        super().__init__()
        if layer_idx is not None:
            self.layer_idx = layer_idx
        self.proj = nn.Linear(width, width)

    def forward(self, hidden_states, past_key_values=None):
        return self.proj(hidden_states)


class ToyBlock(nn.Module):
    def __init__(self, width: int, layer_idx: int | None) -> None:
        super().__init__()
        self.attention = ToyAttention(width, layer_idx)

    def forward(self, hidden_states, past_key_values=None):
        return hidden_states + self.attention(hidden_states, past_key_values=past_key_values)


class ToyModel(nn.Module):
    def __init__(self, with_layer_idx: bool = True) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            num_hidden_layers=2, vocab_size=10, hidden_size=8, num_attention_heads=2, model_type="toy"
        )
        self.embed = nn.Embedding(10, 8)
        self.layers = nn.ModuleList(ToyBlock(8, index if with_layer_idx else None) for index in range(2))

    def forward(self, input_ids, use_cache=False, past_key_values=None):
        hidden_states = self.embed(input_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, past_key_values=past_key_values)
        return hidden_states


def assert_no_hooks(model: nn.Module) -> None:
    for module in model.modules():
        assert not hasattr(module, KV_TRANSFORM_ATTRIBUTE)
        assert not module._forward_pre_hooks


def test_attention_without_cache_update_rejected():
    model = ToyModel()
    with pytest.raises(ModelArgumentError) as error:
        install_kv_cache_transform(model, bits=4)
    message = str(error.value)
    assert "kv_bits" in message
    assert "kv_noise_std" in message
    assert "'toy'" in message
    assert "did not call update()" in message
    assert "layers.0.attention" in message
    assert "Cache.update" in message
    assert_no_hooks(model)


def test_model_without_attention_rejected():
    model = ToyModel(with_layer_idx=False)
    with pytest.raises(ModelArgumentError, match=r"kv_bits / kv_noise_std .*'toy'.*no attention module"):
        install_kv_cache_transform(model, bits=None, noise_std=0.1)
    assert_no_hooks(model)


def test_group_size_not_dividing_head_dim_rejected():
    model = tiny_model()
    with pytest.raises(ModelArgumentError) as error:
        install_kv_cache_transform(model, bits=4, group_size=5)
    message = str(error.value)
    assert "kv_group_size=5" in message
    assert "head_dim=16" in message
    assert "1, 2, 4, 8, 16, or -1" in message
    assert_no_hooks(model)


@pytest.mark.parametrize(
    "arguments,fragment",
    [
        ({"bits": 1}, "kv_bits=1"),
        ({"bits": 9}, "kv_bits=9"),
        ({"bits": 4.0}, "kv_bits=4.0"),
        ({"bits": 4, "group_size": 0}, "kv_group_size=0"),
        ({"bits": None, "noise_std": -0.1}, "kv_noise_std=-0.1"),
        ({"bits": None, "noise_std": float("nan")}, "kv_noise_std=nan"),
    ],
)
def test_invalid_arguments_rejected(arguments, fragment):
    model = tiny_model()
    with pytest.raises(ModelArgumentError, match=fragment):
        install_kv_cache_transform(model, **arguments)
    assert_no_hooks(model)


def test_nothing_to_install_rejected():
    with pytest.raises(ValueError, match="neither bits nor noise_std"):
        install_kv_cache_transform(tiny_model(), bits=None)


def test_second_install_rejected_until_removed():
    model = tiny_model()
    install_kv_cache_transform(model, bits=2)
    two_bit = logits(model)
    with pytest.raises(RuntimeError, match="already installed"):
        install_kv_cache_transform(model, bits=4)
    assert torch.equal(logits(model), two_bit)

    assert remove_kv_cache_transform(model) == 2
    assert_no_hooks(model)
    install_kv_cache_transform(model, bits=4)
    four_bit = logits(model)
    assert not torch.equal(four_bit, two_bit)


# --- the cache wrapper ------------------------------------------------------------------------


def test_wrapper_delegates_to_cache():
    model = tiny_model()
    install_kv_cache_transform(model, bits=4)
    transform = getattr(model.model.layers[0].self_attn, KV_TRANSFORM_ATTRIBUTE)
    cache = DynamicCache(config=model.config)
    wrapper = TransformingCache(cache, transform)
    keys = torch.randn(1, 2, 3, HEAD_DIM)
    stored_keys, _ = wrapper.update(keys, torch.randn(1, 2, 3, HEAD_DIM), 0)
    assert stored_keys is cache.layers[0].keys
    assert wrapper.get_seq_length(0) == 3
    assert len(wrapper) == len(cache)
    assert TransformingCache(wrapper, transform).wrapped_cache is cache

    empty = TransformingCache(None, transform)
    assert empty
    with pytest.raises(AttributeError, match="without a KV cache"):
        empty.get_seq_length()
