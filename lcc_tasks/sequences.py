"""Tokenization of a task's text into consecutive sequences of exactly N tokens.

The harness builds tasks before it hands them a model, so the KL tasks load the model's
tokenizer themselves. They take its name from the ``tokenizer`` or ``pretrained`` value
that the harness copies from ``--model_args`` into every task's metadata. The harness's
RULER tasks get their tokenizer the same way.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class TokenSequence:
    """Token ids of one evaluated sequence and the fingerprint of the tokenizer that made them."""

    ids: np.ndarray  # int64, shape [num_tokens]
    tokenizer_fingerprint: str

    def digest(self) -> str:
        return hashlib.sha256(self.ids.tobytes()).hexdigest()[:16]

    def __str__(self) -> str:
        # The harness writes documents and request arguments into --log_samples files
        # (and hashes them) with str(); a summary keeps a 32k-token sequence to one line.
        head = ", ".join(str(int(token)) for token in self.ids[:8])
        return f"TokenSequence(num_tokens={self.ids.shape[0]}, first=[{head}, ...], sha256={self.digest()})"

    __repr__ = __str__


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Return a short hash of the vocabulary and special tokens, equal for equal tokenizers.

    The padding token is left out: the harness's HF model may add one to its tokenizer,
    and padding never occurs inside the evaluated sequences.
    """
    vocabulary = tokenizer.get_vocab()
    if tokenizer.pad_token is not None and tokenizer.pad_token not in (tokenizer.unk_token, tokenizer.eos_token):
        vocabulary = {token: index for token, index in vocabulary.items() if token != tokenizer.pad_token}
    vocabulary = sorted(vocabulary.items())
    special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    digest = hashlib.sha256(repr((vocabulary, special)).encode("utf-8")).hexdigest()
    return digest[:16]


def tokenizer_name_from_metadata(metadata: dict[str, Any], task_name: str) -> str:
    """Return the tokenizer name the harness passed down, or raise an error that explains how to pass it."""
    name = metadata.get("tokenizer") or metadata.get("pretrained")
    if not name or not isinstance(name, str):
        raise ValueError(
            f"the task {task_name} cuts its text into sequences of tokens and so needs the model's tokenizer, "
            "which it takes from the task metadata keys 'tokenizer' or 'pretrained'. The lm_eval command line "
            "and simple_evaluate(model_args=...) copy --model_args there; with your own TaskManager, pass "
            "TaskManager(metadata={'pretrained': <model name or path>})."
        )
    return name


@lru_cache(maxsize=4)
def load_tokenizer(name: str, add_bos_token: bool | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    from lcc_models.checkpoints import resolve_pretrained

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if add_bos_token is not None:
        kwargs["add_bos_token"] = add_bos_token
    return AutoTokenizer.from_pretrained(resolve_pretrained(name), **kwargs)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x")["input_ids"][:1] == [bos]


@lru_cache(maxsize=4)
def _encode_cached(tokenizer: Any, text: str) -> np.ndarray:
    # The four KL tasks of one corpus share the text, so it is tokenized once per run.
    # verbose=False: the whole text is longer than model_max_length on purpose.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def split_into_sequences(tokenizer: Any, text: str, seq_len: int) -> list[TokenSequence]:
    """Tokenize ``text`` once and cut it into consecutive sequences of exactly ``seq_len`` tokens.

    Each sequence starts with BOS when the tokenizer prepends one (LLaMA-2's does), then
    continues the text where the previous sequence stopped. The remainder that does not
    fill a whole sequence is dropped.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 tokens, got {seq_len}")
    stream = _encode_cached(tokenizer, text)
    bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
    body = seq_len - len(bos)
    count = stream.shape[0] // body
    if count == 0:
        raise ValueError(
            f"the text has {stream.shape[0]} tokens, fewer than one sequence of {seq_len} tokens; "
            "use a shorter seq_len or a longer text"
        )
    fingerprint = tokenizer_fingerprint(tokenizer)
    prefix = np.asarray(bos, dtype=np.int64)
    return [
        TokenSequence(np.concatenate([prefix, stream[index * body : (index + 1) * body]]), fingerprint)
        for index in range(count)
    ]


def document_sequences(tokenizer: Any, documents: list[str], max_len: int) -> list[TokenSequence]:
    """Tokenize each document on its own, from its start, up to ``max_len`` tokens including BOS.

    A longer document is cut at the end, never in the middle, so that every position keeps
    the whole context before it. Documents with fewer than 2 tokens have no prediction to
    score and are dropped.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 tokens, got {max_len}")
    bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
    fingerprint = tokenizer_fingerprint(tokenizer)
    sequences = []
    for document in documents:
        ids = tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"]
        tokens = np.asarray((bos + ids)[:max_len], dtype=np.int64)
        if tokens.shape[0] >= 2:
            sequences.append(TokenSequence(tokens, fingerprint))
    return sequences
