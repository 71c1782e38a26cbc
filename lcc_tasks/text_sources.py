"""Text sources of the KL tasks: the Hugging Face hub, a local copy, or CPython's docs.

A task with ``dataset_path`` reads a local plain-text copy when the user names one, and
the hub otherwise. The file is named by the task metadata key that ``local_file_key`` gives
(``--metadata wikitext_file=PATH`` on the command line, or a YAML override), or else by
the environment variable ``LCC_<KEY>`` (``LCC_WIKITEXT_FILE``).
"""

from __future__ import annotations

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
    try:
        import datasets

        rows = datasets.load_dataset(dataset_path, dataset_name, split=split)
    except Exception as error:  # noqa: BLE001 - any hub or cache failure leads to the same fix
        hint = ""
        if local_file_key:
            hint = (
                f" To use a local plain-text copy instead, name it with --metadata {local_file_key}=PATH "
                f"(or 'metadata: {{{local_file_key}: PATH}}' in a task YAML that includes this one) "
                f"or the environment variable {local_file_env_var(local_file_key)}=PATH."
            )
        raise TextSourceError(
            f"could not load the Hugging Face dataset {dataset_path!r} (config {dataset_name!r}, split {split!r}): "
            f"{type(error).__name__}: {error}.{hint}"
        ) from error
    if text_field not in rows.column_names:
        raise TextSourceError(
            f"the dataset {dataset_path!r} has no column {text_field!r}; its columns are {rows.column_names}"
        )
    return text_join.join(rows[text_field]), f"{dataset_path}/{dataset_name}:{split}"


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
