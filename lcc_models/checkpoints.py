"""Checkpoints that ship inside the lcc package, addressable by name as ``pretrained=``.

    lm_eval --model lcc_compressed --model_args pretrained=lcc-tiny-llama,w_bits=3 ...

``lcc-tiny-llama`` is a 4-layer LLaMA (hidden size 128, 4,096-token byte-level BPE
vocabulary, 1,024-token training context) that ``scripts/train_demo_model.py`` trained on
the CPython standard library's source code. It exists so that the whole pipeline runs in a few minutes on a
CPU. Its numbers tell nothing about 7B models.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_CHECKPOINTS = {
    "lcc-tiny-llama": Path(__file__).resolve().parent / "demo_checkpoint",
}


def resolve_pretrained(name_or_path: str) -> str:
    """Return the folder of an embedded checkpoint, or ``name_or_path`` unchanged.

    A local folder of the same name as an embedded checkpoint takes precedence, so a
    user's own files are never shadowed.
    """
    if not isinstance(name_or_path, str) or name_or_path not in EMBEDDED_CHECKPOINTS:
        return name_or_path
    if Path(name_or_path).exists():
        return name_or_path
    folder = EMBEDDED_CHECKPOINTS[name_or_path]
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded checkpoint '{name_or_path}' is missing from {folder}; "
            "reinstall lcc, or rebuild it with: python scripts/train_demo_model.py"
        )
    return str(folder)
