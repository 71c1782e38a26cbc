"""Text sources of the KL tasks: the Hugging Face hub, a local copy, or CPython's docs.

A task with ``dataset_path`` reads a local copy when the user names one, and the hub
otherwise. The local copy is named by the task metadata key that ``local_file_key`` gives
(``--metadata wikitext_file=PATH`` on the command line, or a YAML override), or else by
the environment variable ``LCC_<KEY>`` (``LCC_WIKITEXT_FILE``). Corpus tasks (WikiText)
read one text; document tasks (LongBench) read one document per row, from the hub or
from a local JSONL file in LongBench's schema.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class TextSourceError(RuntimeError):
    """The task's text could not be read from the hub or from the named local file."""


def local_file_env_var(local_file_key: str) -> str:
    return f"LCC_{local_file_key.upper()}"


def load_task_text(
    *,
    dataset_path: str | None,
    dataset_name: str | None,
    split: str | None,
    text_field: str,
    text_join: str,
    local_file_key: str | None,
    metadata: dict[str, Any],
) -> tuple[str, str]:
    """Return the task's text and a short description of where it came from."""
    local_file = _named_local_file(local_file_key, metadata)
    if local_file is not None:
        return read_local_text(local_file), f"local file {local_file}"
    if not dataset_path:
        raise TextSourceError("the task config names neither dataset_path nor custom_dataset")
    hint = _local_file_hint(local_file_key, "a local plain-text copy")
    texts = hub_column(dataset_path, dataset_name, split, None, text_field, hint)
    return text_join.join(texts), f"{dataset_path}/{dataset_name}:{split}"


def load_task_documents(
    *,
    dataset_path: str | None,
    dataset_name: str | None,
    split: str | None,
    dataset_kwargs: dict[str, Any] | None,
    document_field: str,
    local_file_key: str | None,
    metadata: dict[str, Any],
) -> tuple[list[str], str]:
    """Return the documents of a document task, one string per row, and where they came from.

    A local copy is a JSONL folder or file in LongBench's schema. In a folder, the task
    reads ``<dataset_name>.jsonl``, as LongBench's own data files are named. In a single
    file, it keeps the rows whose ``dataset`` field equals ``dataset_name``.
    """
    local = _named_local_file(local_file_key, metadata)
    if local is not None:
        if local.is_dir():
            path = local / f"{dataset_name}.jsonl"
            if not path.is_file():
                raise TextSourceError(
                    f"{path} does not exist: a folder named by {local_file_key} must hold a <subset>.jsonl file "
                    f"for every task that runs (here {dataset_name}.jsonl), as LongBench's own data files are named. "
                    "Alternatively, name one JSONL file whose 'dataset' field gives each row's subset"
                )
            records = read_jsonl_records(path, document_field)
        else:
            records = [
                record for record in read_jsonl_records(local, document_field) if record.get("dataset") == dataset_name
            ]
            path = local
        if not records:
            raise TextSourceError(
                f"{path} has no rows with dataset={dataset_name!r}; a single local file must hold the rows of "
                f"every task it serves, each with its config name in the 'dataset' field (as {dataset_name!r})"
            )
        return [record[document_field] for record in records], f"local file {path}"
    if not dataset_path:
        raise TextSourceError("the task config names no dataset_path")
    hint = _local_file_hint(local_file_key, "a local JSONL file or folder")
    documents = hub_column(dataset_path, dataset_name, split, dataset_kwargs, document_field, hint)
    return documents, f"{dataset_path}/{dataset_name}:{split}"


def hub_column(
    dataset_path: str,
    dataset_name: str | None,
    split: str | None,
    dataset_kwargs: dict[str, Any] | None,
    column: str,
    hint: str,
) -> list[str]:
    """Return one column of a Hugging Face dataset split; ``hint`` ends the error when the hub fails."""
    try:
        import datasets

        rows = datasets.load_dataset(dataset_path, dataset_name, split=split, **(dataset_kwargs or {}))
    except Exception as error:  # noqa: BLE001 - any hub or cache failure leads to the same fix
        raise TextSourceError(
            f"could not load the Hugging Face dataset {dataset_path!r} (config {dataset_name!r}, split {split!r}): "
            f"{type(error).__name__}: {error}.{hint}"
        ) from error
    if column not in rows.column_names:
        raise TextSourceError(f"the dataset {dataset_path!r} has no column {column!r}; its columns are {rows.column_names}")
    return list(rows[column])


def read_jsonl_records(path: Path, required_field: str) -> list[dict[str, Any]]:
    """Read a JSON Lines file whose every non-empty line is an object with a string ``required_field``."""
    if not path.is_file():
        raise TextSourceError(f"the local JSONL file {path} does not exist or is not a file")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TextSourceError(f"{path}, line {line_number}: invalid JSON ({error.msg})") from error
            if not isinstance(record, dict) or not isinstance(record.get(required_field), str):
                raise TextSourceError(
                    f"{path}, line {line_number}: expected a JSON object with a string field {required_field!r}"
                )
            records.append(record)
    return records


def _local_file_hint(local_file_key: str | None, alternative: str) -> str:
    if not local_file_key:
        return ""
    return (
        f" To use {alternative} instead, name it with --metadata {local_file_key}=PATH "
        f"(or 'metadata: {{{local_file_key}: PATH}}' in a task YAML that includes this one) "
        f"or the environment variable {local_file_env_var(local_file_key)}=PATH."
    )


def _named_local_file(local_file_key: str | None, metadata: dict[str, Any]) -> Path | None:
    if not local_file_key:
        return None
    value = metadata.get(local_file_key) or os.environ.get(local_file_env_var(local_file_key))
    return Path(value).expanduser() if value else None


def read_local_text(path: Path) -> str:
    """Read a UTF-8 text file as it is; Windows line endings become ``\\n``."""
    if not path.is_file():
        raise TextSourceError(f"the local text file {path} does not exist or is not a file")
    # Universal-newline mode turns \r\n into \n, so a copy saved on Windows tokenizes
    # the same as the original.
    with path.open(encoding="utf-8") as handle:
        return handle.read()


def python_documentation(**_: Any) -> str:
    """Return the language reference that ships with CPython in ``pydoc_data.topics``.

    The text is read from the running interpreter, so it changes with the Python
    version; topics are joined in sorted order, separated by blank lines.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as error:
        raise TextSourceError(
            "this Python installation lacks pydoc_data, the standard-library documentation that the "
            "demo task reads; install your distribution's full standard library (for Debian: libpython3-stdlib)"
        ) from error
    return "\n\n".join(topics[name] for name in sorted(topics))
