"""Write the YAML configs of the LongBench KL tasks and their groups into task_configs/longbench_kl/.

    python scripts/generate_longbench_configs.py

The configs are committed; rerun this script after changing the lists or settings here.
Tasks: ``longbench_kl_<subset>_<length>`` for each English LongBench subset and
``longbench_e_kl_<subset>_<length>`` for each LongBench-E subset, at 8k, 16k and 32k
tokens. Groups: ``longbench_kl_<length>``, ``longbench_e_kl_<length>``, ``longbench_kl``,
``longbench_e_kl``, and ``lcc_kl`` with WikiText and both LongBench groups.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent / "task_configs" / "longbench_kl"
# The parquet conversion of LongBench that lm-eval 0.4.13's own longbench tasks read, with
# one config per subset (LongBench-E subsets end in _e). No loading script is needed.
DATASET_PATH = "Xnhyacinth/LongBench"
# NOTE: the GRKV project (github.com/pjunjie/GRKV) pins this revision as "Formatted LongBench";
# it was not fetched here, because the development machines cannot reach the hub.
DATASET_REVISION = "2e9ade51ebf45d98942056c0716234f9d5d257d5"
ENGLISH_SUBSETS = (
    "narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report", "qmsum",
    "multi_news", "trec", "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)
E_SUBSETS = (
    "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
    "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)
LENGTHS = {"8k": 8192, "16k": 16384, "32k": 32768}

TEMPLATE = f"""# Shared by the longbench_kl_* and longbench_e_kl_* tasks (written by
# scripts/generate_longbench_configs.py). Each task file repeats the whole metadata block,
# because an including file's metadata replaces this one's instead of merging with it.
class: !function lcc_tasks.task.PositionalKLTask
output_type: kl_divergence
dataset_path: {DATASET_PATH}
dataset_kwargs:
  revision: {DATASET_REVISION}
test_split: test
num_fewshot: 0
"""

TASK = """# KL of the compressed model from its reference on the contexts of LongBench's {config}
# subset, each evaluated from its first token up to {seq_len} tokens and cut at the end.
# Written by scripts/generate_longbench_configs.py.
include: _longbench_kl_template
task: {task}
dataset_name: {config}
metadata:
  version: 1.0
  seq_len: {seq_len}
  num_buckets: 8
  curve_stride: 64
  document_field: context
  # Without the hub: --metadata longbench_file=PATH or LCC_LONGBENCH_FILE=PATH, a folder of
  # LongBench's <subset>.jsonl files or one JSONL file whose 'dataset' field names the subset.
  local_file_key: longbench_file
"""

GROUP = """# {description} Written by scripts/generate_longbench_configs.py.
# No aggregate row: KL of different corpora and lengths does not average into anything meaningful.
group: {group}
task:
{tasks}
metadata:
  version: 1.0
"""


def write(name: str, text: str) -> None:
    (FOLDER / name).write_text(text, encoding="utf-8")


def task_list(names: list[str]) -> str:
    return "\n".join(f"  - {name}" for name in names)


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    for stale in FOLDER.glob("*.yaml"):
        stale.unlink()
    write("_longbench_kl_template", TEMPLATE)

    for prefix, subsets, suffix, label in (
        ("longbench_kl", ENGLISH_SUBSETS, "", "LongBench (English subsets)"),
        ("longbench_e_kl", E_SUBSETS, "_e", "LongBench-E"),
    ):
        for length, seq_len in LENGTHS.items():
            tasks = []
            for subset in subsets:
                task = f"{prefix}_{subset}_{length}"
                write(f"{task}.yaml", TASK.format(config=f"{subset}{suffix}", seq_len=seq_len, task=task))
                tasks.append(task)
            description = f"Every {label} KL task at {length} tokens."
            write(f"{prefix}_{length}.yaml", GROUP.format(description=description, group=f"{prefix}_{length}", tasks=task_list(tasks)))
        groups = [f"{prefix}_{length}" for length in LENGTHS]
        description = f"Every {label} KL task at every length."
        write(f"{prefix}.yaml", GROUP.format(description=description, group=prefix, tasks=task_list(groups)))

    description = "WikiText and LongBench KL tasks at every length."
    write("lcc_kl.yaml", GROUP.format(description=description, group="lcc_kl", tasks=task_list(["wikitext_kl", "longbench_kl", "longbench_e_kl"])))


if __name__ == "__main__":
    main()
