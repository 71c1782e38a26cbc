"""The harness task behind every positional KL task (``wikitext_kl_32k``, ``lcc_demo_kl``, ...).

    lm_eval --model lcc_compressed --model_args pretrained=...,w_bits=3 --tasks wikitext_kl_32k

Each YAML config names this class and declares its data and settings. The settings live
under ``metadata`` because the harness's ``TaskConfig`` accepts no other custom keys:

    metadata:
      seq_len: 32768         # tokens per evaluated sequence, BOS included
      num_buckets: 8         # equal-width position buckets (or bucket_edges: [0, 1024, ...])
      curve_stride: 64       # positions per point of the per-position curve file
      local_file_key: wikitext_file   # --metadata wikitext_file=PATH / LCC_WIKITEXT_FILE

Documents are consecutive ``seq_len``-token sequences of the text, so ``--limit N`` caps
the number of sequences. Each document is one ``kl_divergence`` request, which only
``lcc_compressed`` serves. The reply contains per-position statistics of both models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from lm_eval.api.task import Task
from lm_eval.config.task import TaskConfig
from lm_eval.filters import build_filter_ensemble

from lcc_tasks import curves, positional
from lcc_tasks.harness_hooks import use_harness_logging
from lcc_tasks.sequences import (
    load_tokenizer,
    split_into_sequences,
    tokenizer_name_from_metadata,
)
from lcc_tasks.text_sources import load_task_text

logger = logging.getLogger(__name__)

REQUEST_TYPE = "kl_divergence"
_TASK_CONFIG_FIELDS = {field.name for field in fields(TaskConfig)}


@dataclass(frozen=True)
class KLTaskSettings:
    """The ``metadata`` settings of a positional KL task, validated."""

    seq_len: int
    bucket_edges: tuple[int, ...]
    curve_stride: int
    text_field: str
    text_join: str
    local_file_key: str | None

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], task_name: str) -> KLTaskSettings:
        seq_len = metadata.get("seq_len")
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
            raise ValueError(
                f"task {task_name}: metadata.seq_len must be an integer number of tokens >= 2, got {seq_len!r}"
            )
        curve_stride = metadata.get("curve_stride", 64)
        if not isinstance(curve_stride, int) or isinstance(curve_stride, bool) or curve_stride < 1:
            raise ValueError(
                f"task {task_name}: metadata.curve_stride must be a positive number of positions, got {curve_stride!r}"
            )
        try:
            edges = positional.bucket_edges(seq_len, metadata.get("num_buckets", 8), metadata.get("bucket_edges"))
        except ValueError as error:
            raise ValueError(f"task {task_name}: {error}") from error
        return cls(
            seq_len=seq_len,
            bucket_edges=tuple(edges),
            curve_stride=curve_stride,
            text_field=str(metadata.get("text_field", "text")),
            text_join=str(metadata.get("text_join", "\n\n")),
            local_file_key=metadata.get("local_file_key"),
        )


class PositionalKLTask(Task):
    """KL divergence of the compressed model from its reference, per token position."""

    VERSION = 1
    OUTPUT_TYPE = REQUEST_TYPE

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        use_harness_logging()
        config = dict(config or {})
        unknown = sorted(set(config) - _TASK_CONFIG_FIELDS - {"class"})
        if unknown:
            raise ValueError(
                f"task {config.get('task')}: unknown config keys {unknown}; put task settings under 'metadata'"
            )
        self._config = TaskConfig(**{key: value for key, value in config.items() if key != "class"})
        metadata = dict(self._config.metadata or {})
        if "version" in metadata:
            self.VERSION = metadata["version"]
        self.settings = KLTaskSettings.from_metadata(metadata, self.task_name)
        self._docs = self._build_docs(metadata)

        self._training_docs = None
        self._fewshot_docs = None
        self._instances = None
        self._filters = [build_filter_ensemble("none", [["take_first", None]])]
        self.fewshot_rnd = None

    def _build_docs(self, metadata: dict[str, Any]) -> list[dict[str, Any]]:
        tokenizer = load_tokenizer(
            tokenizer_name_from_metadata(metadata, self.task_name),
            metadata.get("add_bos_token"),
            bool(metadata.get("trust_remote_code", False)),
        )
        if self._config.custom_dataset is not None:
            text = self._config.custom_dataset(metadata=metadata)
            source = getattr(self._config.custom_dataset, "__name__", "custom_dataset")
        else:
            text, source = load_task_text(
                dataset_path=self._config.dataset_path,
                dataset_name=self._config.dataset_name,
                split=self._config.test_split,
                text_field=self.settings.text_field,
                text_join=self.settings.text_join,
                local_file_key=self.settings.local_file_key,
                metadata=metadata,
            )
        sequences = split_into_sequences(tokenizer, text, self.settings.seq_len)
        logger.info(
            "%s: %d sequences of %d tokens from %s", self.task_name, len(sequences), self.settings.seq_len, source
        )
        return [
            {
                "sequence": index,
                "num_tokens": self.settings.seq_len,
                "token_ids": tokens,
                "text": tokenizer.decode(tokens.ids, skip_special_tokens=True),
            }
            for index, tokens in enumerate(sequences)
        ]

    def download(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to do: the documents are built from the text in ``__init__``."""

    def has_training_docs(self) -> bool:
        return False

    def has_validation_docs(self) -> bool:
        return False

    def has_test_docs(self) -> bool:
        return True

    def test_docs(self) -> list[dict[str, Any]]:
        return self._docs

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["text"]

    def doc_to_target(self, doc: dict[str, Any]) -> str:
        return ""

    def fewshot_context(self, doc: dict[str, Any], num_fewshot: int, **kwargs: Any) -> str:
        if num_fewshot:
            raise ValueError(f"task {self.task_name} compares two models on fixed token sequences; it has no few-shot form")
        return doc["text"]

    def construct_requests(self, doc: dict[str, Any], ctx: str, **kwargs: Any) -> Any:
        from lm_eval.api.instance import Instance

        return Instance(
            request_type=REQUEST_TYPE,
            doc=doc,
            arguments=(ctx, doc["token_ids"]),
            idx=0,
            metadata=kwargs.get("metadata", (self.task_name, None, 1)),
        )

    def process_results(self, doc: dict[str, Any], results: list[Any]) -> dict[str, Any]:
        (stats,) = results
        return positional.summarize_sequence(stats, self.settings.bucket_edges, self.settings.curve_stride)

    def metric_names(self) -> list[str]:
        return ["kl", "kl_ref", "top1_agree", "ppl_ratio", *positional.bucket_metric_names(self.settings.bucket_edges)]

    def aggregation(self) -> dict[str, Any]:
        aggregations = {name: positional.mean_of_sums for name in self.metric_names()}
        aggregations["kl"] = self._aggregate_kl
        aggregations["ppl_ratio"] = positional.ppl_ratio
        return aggregations

    def higher_is_better(self) -> dict[str, bool]:
        return {name: name == "top1_agree" for name in self.metric_names()}

    def _aggregate_kl(self, items: list[dict[str, Any]]) -> float:
        # The per-sequence kl values also carry the curve sums, so the mean curve is
        # built here, from the values the harness gathered from every rank.
        curve = positional.mean_curve(items, self.settings.curve_stride)
        curve["seq_len"] = self.settings.seq_len
        curve["bucket_edges"] = list(self.settings.bucket_edges)
        curves.record(self.task_name, curve)
        return positional.mean_of_sums([item["sum"], item["tokens"]] for item in items)
