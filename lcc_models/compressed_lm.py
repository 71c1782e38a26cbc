"""``lcc_compressed``: the harness's HF model, compressed at load time, with its reference kept.

    lm_eval --model lcc_compressed \\
      --model_args pretrained=togethercomputer/LLaMA-2-7B-32K,w_bits=3,w_group_size=128,dtype=bfloat16 \\
      --tasks wikitext_kl_32k --device cuda:0 --output_path results/

It accepts every argument of ``--model hf`` plus the keys in ``lcc_models.spec``. Standard
harness tasks evaluate the compressed model. The KL tasks send ``kl_divergence``
requests, which run each sequence through the compressed model and through the reference
and compare their next-token distributions. By default the reference is the same loaded
model with its original weights switched back in, so the checkpoint is read from disk once.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import torch
import transformers
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import get_dtype
from tqdm import tqdm

from lcc_models.checkpoints import resolve_pretrained
from lcc_models.compression.calibration import calibration_tokens, read_documents
from lcc_models.compression.layers import reference_mode
from lcc_models.compression.walk import check_structure, compress_model
from lcc_models.spec import (
    DEFAULT_KL_CHUNK_SIZE,
    LCC_KEYS,
    CompressionSpec,
    ModelArgumentError,
    near_matches,
    parse_positive_int,
)
from lcc_tasks.harness_hooks import use_harness_logging
from lcc_tasks.kl import TokenKL, token_kl
from lcc_tasks.sequences import tokenizer_fingerprint

logger = logging.getLogger(__name__)

# Keyword arguments of transformers' from_pretrained that --model hf passes through.
FROM_PRETRAINED_KEYS = (
    "attn_implementation",
    "device_map",
    "max_memory",
    "low_cpu_mem_usage",
    "load_in_8bit",
    "load_in_4bit",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant",
    "use_safetensors",
    "variant",
    "cache_dir",
    "local_files_only",
    "token",
    "force_download",
    "offload_state_dict",
    "key_mapping",
)


@register_model("lcc_compressed")
class CompressedHFLM(HFLM):
    """HF causal LM compressed at load time; serves the KL tasks and every standard task."""

    def __init__(
        self,
        pretrained: str | transformers.PreTrainedModel,
        reference: str | None = None,
        kl_chunk_size: int = DEFAULT_KL_CHUNK_SIZE,
        **kwargs: Any,
    ) -> None:
        use_harness_logging()
        spec, hf_kwargs = CompressionSpec.from_model_args(kwargs)
        self.kl_chunk_size = parse_positive_int("kl_chunk_size", kl_chunk_size)
        pretrained = resolve_pretrained(pretrained)
        # Every check that needs no weights runs here, so that bad input fails in seconds
        # rather than after a 7B checkpoint has loaded.
        config = _load_config(pretrained, hf_kwargs)
        _reject_unknown_keys(hf_kwargs, config)
        if spec.enabled and config is not None:
            _check_structure_before_loading(spec, pretrained, config, hf_kwargs)
        tokens = None
        if spec.needs_calibration:
            _check_calibration_length(spec, config)
            tokens = calibration_tokens(
                _load_calibration_tokenizer(pretrained, hf_kwargs),
                read_documents(spec.calib_data),
                spec.calib_data,
                spec.calib_nsamples,
                spec.calib_seqlen,
                spec.seed,
            )

        super().__init__(pretrained=pretrained, **hf_kwargs)
        self._tokenizer_fingerprint = tokenizer_fingerprint(self.tokenizer)
        self.compression_spec = spec
        self.reference_name = reference
        self._reference_model: transformers.PreTrainedModel | None = None
        if reference is not None:
            self._reference_model = self._load_reference(reference, hf_kwargs)
        self.compression_report = (
            compress_model(self.model, spec, keep_reference=reference is None, calibration_tokens=tokens)
            if spec.enabled
            else None
        )

    # ------------------------------------------------------------------ reference model

    def _load_reference(self, reference: str, hf_kwargs: dict[str, Any]) -> transformers.PreTrainedModel:
        reference_path = resolve_pretrained(reference)
        trust_remote_code = bool(hf_kwargs.get("trust_remote_code", False))
        try:
            reference_tokenizer = transformers.AutoTokenizer.from_pretrained(
                reference_path, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as error:
            raise ModelArgumentError(
                f"could not load the tokenizer of reference={reference} to check that it matches pretrained's: "
                f"{error}. The reference must ship the same tokenizer as the compressed model."
            ) from error
        if tokenizer_fingerprint(reference_tokenizer) != self._tokenizer_fingerprint:
            raise ModelArgumentError(
                f"reference={reference} uses a different tokenizer (vocabulary or special tokens) than "
                f"pretrained={self.pretrained}, so their next-token distributions cannot be compared. "
                "Use a reference built on the same tokenizer."
            )
        logger.info("Loading the reference model %s", reference_path)
        model_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        # Spread the reference over devices only when the compressed model is spread too.
        # A one-device map, which --device cuda:0 gives, puts it where the model is.
        if len(set((getattr(self.model, "hf_device_map", None) or {}).values())) > 1:
            model_kwargs["device_map"] = "auto"
        model = transformers.AutoModelForCausalLM.from_pretrained(
            reference_path, dtype=get_dtype(hf_kwargs.get("dtype", "auto")), **model_kwargs
        )
        if "device_map" not in model_kwargs:
            model.to(self.device)
        return model.eval()

    @contextlib.contextmanager
    def _reference(self) -> Iterator[transformers.PreTrainedModel]:
        """Yield the model that computes reference distributions while the block runs."""
        if self._reference_model is not None:
            yield self._reference_model
            return
        with reference_mode(self.model):
            yield self.model

    # ------------------------------------------------------------------ KL requests

    def kl_divergence(self, requests: list[Any]) -> list[TokenKL]:
        """Serve the KL tasks: per-position statistics of compressed versus reference model.

        Each request's arguments are ``(text, TokenSequence)``; sequences of equal length
        are batched up to ``batch_size`` (``auto`` counts as 1 here).
        """
        config = self.model.config
        for attribute in ("final_logit_softcapping", "logit_scale"):
            if getattr(config, attribute, None) not in (None, 1, 1.0):
                # NOTE: such models transform the lm_head output inside forward(); the
                # chunked path here calls lm_head directly and would skip that step.
                raise NotImplementedError(f"KL tasks do not support models with {attribute} set ({config.model_type})")
        batch_size = self.batch_size_per_gpu if isinstance(self.batch_size_per_gpu, int) else 1

        results: list[TokenKL] = []
        progress = tqdm(total=len(requests), desc="KL divergence", unit="sequence", disable=self.rank != 0)
        for batch in _batches_of_equal_length(requests, batch_size):
            input_ids = torch.stack([self._checked_ids(request) for request in batch])
            stats = self.sequence_kl(input_ids)
            results.extend(stats.sequence(index) for index in range(len(batch)))
            progress.update(len(batch))
        progress.close()
        return results

    def _checked_ids(self, request: Any) -> torch.Tensor:
        _, tokens = request.args
        if tokens.tokenizer_fingerprint != self._tokenizer_fingerprint:
            raise ValueError(
                f"task {request.task_name} was tokenized with a different tokenizer than this model's "
                f"({self.tokenizer.name_or_path}); pass the same tokenizer= (or pretrained=) to the task metadata"
            )
        if tokens.ids.shape[0] > self.max_length:
            raise ValueError(
                f"task {request.task_name} has sequences of {tokens.ids.shape[0]} tokens, more than this model's "
                f"max_length {self.max_length}. Choose a task with shorter sequences, or pass max_length=... "
                "if the model supports a longer context"
            )
        return torch.as_tensor(tokens.ids, dtype=torch.long)

    @torch.no_grad()
    def sequence_kl(self, input_ids: torch.Tensor) -> TokenKL:
        """Return per-position KL statistics for a batch of token sequences, [batch, T]."""
        hidden = self._final_hidden_states(self.model, input_ids)
        with self._reference() as reference:
            hidden_ref = self._final_hidden_states(reference, input_ids)
        return token_kl(
            hidden,
            hidden_ref,
            self.model.get_output_embeddings(),
            reference.get_output_embeddings(),
            input_ids[:, 1:],
            chunk_size=self.kl_chunk_size,
        )

    def _final_hidden_states(self, model: transformers.PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        device = model.get_input_embeddings().weight.device
        with torch.autocast(
            device_type=device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        ):
            # use_cache=False: a 32k-token forward would otherwise keep every layer's keys
            # and values (17 GB for LLaMA-2-7B in fp16) for no use.
            outputs = decoder(input_ids=input_ids.to(device), use_cache=False)
        return outputs.last_hidden_state

    # ------------------------------------------------------------------ results metadata

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        if self.compression_report is not None:
            info["compression"] = self.compression_report.as_dict()
        else:
            info["compression"] = {"spec": self.compression_spec.to_dict(), "overall": None}
        info["reference"] = self.reference_name or "uncompressed weights of pretrained"
        return info


def _batches_of_equal_length(requests: list[Any], batch_size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for request in requests:
        if batch and (len(batch) == batch_size or len(request.args[1].ids) != len(batch[0].args[1].ids)):
            yield batch
            batch = []
        batch.append(request)
    if batch:
        yield batch


def _load_config(pretrained: Any, hf_kwargs: dict[str, Any]) -> transformers.PretrainedConfig | None:
    """Return the model config without loading weights, or None if it cannot be read (HFLM reports that better)."""
    if not isinstance(pretrained, str):
        return pretrained.config
    try:
        return transformers.AutoConfig.from_pretrained(
            pretrained,
            revision=str(hf_kwargs.get("revision") or "main"),
            trust_remote_code=bool(hf_kwargs.get("trust_remote_code", False)),
        )
    except (OSError, ValueError):
        return None


def _check_structure_before_loading(
    spec: CompressionSpec, pretrained: Any, config: transformers.PretrainedConfig, hf_kwargs: dict[str, Any]
) -> None:
    """Run the spec's structural checks (group sizes, targets, N:M, KV groups) on a weightless copy of the model."""
    if not isinstance(pretrained, str):
        check_structure(pretrained, spec)
        return
    try:
        with torch.device("meta"):
            skeleton = transformers.AutoModelForCausalLM.from_config(
                config, trust_remote_code=bool(hf_kwargs.get("trust_remote_code", False))
            )
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as error:
        # compress_model runs the same checks after loading, so nothing is skipped.
        logger.debug("could not build %s on the meta device to check the spec early: %s", pretrained, error)
        return
    check_structure(skeleton, spec)


def _load_calibration_tokenizer(pretrained: Any, hf_kwargs: dict[str, Any]) -> Any:
    """Return the tokenizer that --model hf will load, read before the model so calibration fails early."""
    tokenizer = hf_kwargs.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer  # a tokenizer object passed through the Python API
    name = tokenizer or (pretrained if isinstance(pretrained, str) else pretrained.name_or_path)
    return transformers.AutoTokenizer.from_pretrained(
        name,
        revision=str(hf_kwargs.get("revision") or "main"),
        trust_remote_code=bool(hf_kwargs.get("trust_remote_code", False)),
    )


def _check_calibration_length(spec: CompressionSpec, config: transformers.PretrainedConfig | None) -> None:
    text_config = getattr(config, "text_config", None) or config
    limit = getattr(text_config, "max_position_embeddings", None)
    if limit is not None and spec.calib_seqlen > limit:
        raise ModelArgumentError(
            f"invalid calib_seqlen={spec.calib_seqlen}: the model accepts at most {limit} positions "
            f"(max_position_embeddings). Accepted values are integers from 2 to {limit}; the default is 2048"
        )


def _reject_unknown_keys(hf_kwargs: dict[str, Any], config: transformers.PretrainedConfig | None) -> None:
    """Raise ``ModelArgumentError`` for a key that is neither an lcc key, an argument of --model hf, nor a config attribute."""
    hf_parameters = set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}
    known = hf_parameters | set(LCC_KEYS) | set(FROM_PRETRAINED_KEYS)
    unknown = [key for key in hf_kwargs if key not in known]
    if not unknown:
        return

    # Anything else --model hf would forward to from_pretrained, where keys that name a
    # config attribute (rope_scaling=..., say) override the config; others are errors.
    config_keys = set(config.to_dict()) if config is not None else set()
    unknown = [key for key in unknown if key not in config_keys]
    if not unknown:
        return

    key = unknown[0]
    suggestions = near_matches(key, known | config_keys)
    did_you_mean = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise ModelArgumentError(
        f"unknown model argument {key}={hf_kwargs[key]!r} for lcc_compressed.{did_you_mean} Accepted: the lcc keys "
        f"({', '.join(LCC_KEYS)}), the arguments of --model hf ({', '.join(sorted(hf_parameters))}), "
        f"from_pretrained keyword arguments ({', '.join(FROM_PRETRAINED_KEYS)}) and attributes of the model config."
    )
