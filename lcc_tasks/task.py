"""The harness task behind every positional KL task (``wikitext_kl_32k``, ``longbench_kl_qasper_32k``, ...).

    lm_eval --model lcc_compressed --model_args pretrained=...,w_bits=3 --tasks wikitext_kl_32k

Each YAML config names this class and declares its data and settings. The settings live
under ``metadata`` because the harness's ``TaskConfig`` accepts no other custom keys:

    metadata:
      seq_len: 32768         # tokens per evaluated sequence, BOS included
      num_buckets: 8         # equal-width position buckets (or bucket_edges: [0, 1024, ...])
      curve_stride: 64       # positions per point of the per-position curve file
      local_file_key: wikitext_file   # --metadata wikitext_file=PATH / LCC_WIKITEXT_FILE
      document_field: context         # document tasks only: one document per dataset row
      bootstrap_iters: 1000           # bootstrap replicates over documents (0: no intervals)
      bootstrap_seed: 0

Corpus tasks cut the text into consecutive ``seq_len``-token sequences. Document tasks
(with ``document_field``) evaluate each row from its first token, cut at ``seq_len``
tokens. Either way ``--limit N`` caps the number of documents. Each document is one
``kl_divergence`` request, which only ``lcc_compressed`` serves. The reply contains
per-position statistics of both models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from lm_eval.api.task import Task
from lm_eval.config.task import TaskConfig
from lm_eval.filters import build_filter_ensemble

from lcc_tasks import aggregation, curves, positional, statistics
from lcc_tasks.aggregation import BootstrapSettings
from lcc_tasks.harness_hooks import use_harness_logging
from lcc_tasks.sequences import (
    document_sequences,
    load_tokenizer,
    split_into_sequences,
    tokenizer_name_from_metadata,
)
from lcc_tasks.text_sources import load_task_documents, load_task_text

logger = logging.getLogger(__name__)

REQUEST_TYPE = "kl_divergence"
# Whole-sequence metrics, in the order of the results table; the bucket metrics follow.
SEQUENCE_METRICS = (
    "kl",
    "kl_ci95_low",
    "kl_ci95_high",
    "kl_ref",
    "js",
    "top1_agree",
    "ppl_ratio",
    "rms_dp",
    *positional.QUANTILE_METRICS,
    "kl_max",
    "kl_slope",
    "kl_slope_ci95_low",
    "kl_slope_ci95_high",
    "kl_growth",
)
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
    document_field: str | None
    bootstrap: BootstrapSettings

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
        bootstrap = BootstrapSettings(
            iters=_non_negative_int(metadata, "bootstrap_iters", 1000, task_name),
            seed=_non_negative_int(metadata, "bootstrap_seed", 0, task_name),
        )
        return cls(
            seq_len=seq_len,
            bucket_edges=tuple(edges),
            curve_stride=curve_stride,
            text_field=str(metadata.get("text_field", "text")),
            text_join=str(metadata.get("text_join", "\n\n")),
            local_file_key=metadata.get("local_file_key"),
            document_field=metadata.get("document_field"),
            bootstrap=bootstrap,
        )


def _non_negative_int(metadata: dict[str, Any], key: str, default: int, task_name: str) -> int:
    value = metadata.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"task {task_name}: metadata.{key} must be an integer >= 0, got {value!r}")
    return value


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
        if self.settings.document_field is not None:
            documents, source = load_task_documents(
                dataset_path=self._config.dataset_path,
                dataset_name=self._config.dataset_name,
                split=self._config.test_split,
                dataset_kwargs=self._config.dataset_kwargs,
                document_field=self.settings.document_field,
                local_file_key=self.settings.local_file_key,
                metadata=metadata,
            )
            sequences = document_sequences(tokenizer, documents, self.settings.seq_len)
            unit = f"documents of up to {self.settings.seq_len} tokens"
        else:
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
            unit = f"sequences of {self.settings.seq_len} tokens"
        logger.info("%s: %d %s from %s", self.task_name, len(sequences), unit, source)
        return [
            {
                "sequence": index,
                "num_tokens": int(tokens.ids.shape[0]),
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
        edges = self.settings.bucket_edges
        return [
            *SEQUENCE_METRICS,
            *positional.bucket_metric_names(edges),
            *positional.bucket_token_names(edges),
        ]

    def aggregation(self) -> dict[str, Any]:
        settings = self.settings.bootstrap
        mean = statistics.mean_ratio
        aggregations: dict[str, Any] = {
            "kl": self._kl_aggregation(),
            "kl_ci95_low": aggregation.BootstrappedMetric(aggregation.pair_columns, mean, settings, "ci95_low"),
            "kl_ci95_high": aggregation.BootstrappedMetric(aggregation.pair_columns, mean, settings, "ci95_high"),
            "kl_ref": aggregation.BootstrappedMetric(aggregation.pair_columns, mean, settings),
            "js": aggregation.BootstrappedMetric(aggregation.pair_columns, mean, settings),
            "top1_agree": aggregation.BootstrappedMetric(aggregation.pair_columns, mean, settings),
            "ppl_ratio": positional.ppl_ratio,
            "rms_dp": aggregation.root_mean_metric,
            "kl_max": aggregation.max_metric,
            "kl_slope": self._slope,
            "kl_slope_ci95_low": self._slope_bound("ci95_low"),
            "kl_slope_ci95_high": self._slope_bound("ci95_high"),
            "kl_growth": aggregation.BootstrappedMetric(
                aggregation.series_columns, aggregation.growth_from_data, settings, needs_data=True
            ),
        }
        for name, quantile in positional.QUANTILES.items():
            aggregations[name] = aggregation.quantile_metric(quantile)
        for name in positional.bucket_metric_names(self.settings.bucket_edges):
            aggregations[name] = aggregation.BootstrappedMetric(aggregation.bucket_columns, mean, settings)
        for name in positional.bucket_token_names(self.settings.bucket_edges):
            aggregations[name] = aggregation.sum_metric
        return aggregations

    def higher_is_better(self) -> dict[str, bool]:
        return {name: name == "top1_agree" for name in self.metric_names()}

    @property
    def _slope(self) -> aggregation.BootstrappedMetric:
        return self._slope_bound("value")

    def _slope_bound(self, part: str) -> aggregation.BootstrappedMetric:
        centres = aggregation.bucket_centres_in_thousands(self.settings.bucket_edges)
        return aggregation.BootstrappedMetric(
            aggregation.series_columns, statistics.slope_statistic(centres), self.settings.bootstrap, part
        )

    def _kl_aggregation(self) -> Any:
        """Return the aggregation of ``kl``, which also records the curve file's contents."""
        bootstrapped = aggregation.BootstrappedMetric(
            aggregation.pair_columns, statistics.mean_ratio, self.settings.bootstrap
        )

        def aggregate_kl(items: list[dict[str, Any]]) -> float:
            # The per-sequence kl values also carry the curve sums and the bucket summaries,
            # so the curve file is built here, from the values the harness gathered from every rank.
            curve = positional.mean_curve(items, self.settings.curve_stride)
            curve["seq_len"] = self.settings.seq_len
            curve["bucket_edges"] = list(self.settings.bucket_edges)
            curve["buckets"] = aggregation.bucket_report(items, self.settings.bucket_edges, self.settings.bootstrap)
            curve["bootstrap"] = {"iters": self.settings.bootstrap.iters, "seed": self.settings.bootstrap.seed}
            curves.record(self.task_name, curve)
            return positional.mean_of_sums([item["sum"], item["tokens"]] for item in items)

        aggregate_kl.bootstrap_stderr = lambda items: bootstrapped.bootstrap_stderr(
            [[item["sum"], item["tokens"]] for item in items]
        )
        return aggregate_kl
