"""Per-position mean KL curves: kept in memory after aggregation, saved beside the results.

    lm_eval ... --tasks wikitext_kl_32k --output_path results/
    # results/<model>/results_<date>.json    the harness's results
    # results/<model>/kl_curves_<date>.json  one curve per KL task, for plots without a re-run

From the Python API, ``take_curves()`` returns the curves of the last evaluation and
removes them from the store. ``write_curve_file`` also accepts any object that has the
``output_path``, ``date_id`` and ``general_config_tracker`` of an ``EvaluationTracker``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FORMAT = "lcc-kl-curves/1"
_lock = threading.Lock()
_curves: dict[str, dict[str, Any]] = {}


def record(task_name: str, curve: dict[str, Any]) -> None:
    """Store the mean curve of ``task_name``, replacing an earlier one."""
    with _lock:
        _curves[task_name] = curve


def take_curves(task_names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Return the stored curves (of ``task_names``, or all) and remove them from the store."""
    with _lock:
        names = list(_curves) if task_names is None else [name for name in task_names if name in _curves]
        return {name: _curves.pop(name) for name in names}


def curve_file_path(output_path: str | Path, model_name_sanitized: str, date_id: str) -> Path:
    """Return where the curve file goes: beside ``results_<date_id>.json``, as the harness names it."""
    path = Path(output_path)
    if path.suffix == ".json":
        return path.with_name(f"{path.stem}_kl_curves_{date_id}.json")
    return path / model_name_sanitized / f"kl_curves_{date_id}.json"


def write_curve_file(tracker: Any, results: dict[str, Any]) -> Path | None:
    """Write the curves of the KL tasks in ``results`` beside the results file the tracker saved.

    Returns the path written, or None when ``results`` has no KL task. A failure to write
    is logged, not raised: the harness has already saved the results by then.
    """
    task_names = list(results.get("results", {}))
    task_curves = take_curves(task_names)
    if not task_curves:
        return None
    config = results.get("config", {})
    document = {
        "format": FORMAT,
        "description": (
            "Token-weighted mean per-position statistics. Point i covers token positions "
            "[position_start[i], position_start[i] + curve_stride); position t scores the prediction of "
            "token t + 1. kl = D_KL(P_compressed || P_reference), kl_ref = D_KL(P_reference || P_compressed), "
            "nll and nll_ref are the negative log-likelihoods of the actual next token, all in nats."
        ),
        "model": config.get("model"),
        "model_args": config.get("model_args"),
        "compression": config.get("compression"),
        "tasks": task_curves,
    }
    try:
        model_name = str(getattr(tracker.general_config_tracker, "model_name_sanitized", "") or "")
        path = curve_file_path(tracker.output_path, model_name, tracker.date_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_finite(document), indent=2) + "\n", encoding="utf-8")
    except (OSError, AttributeError, TypeError) as error:
        logger.error("could not write the KL curve file beside the results in %s: %s", tracker.output_path, error)
        return None
    logger.info("Saved per-position KL curves to %s", path)
    return path


def _finite(value: Any) -> Any:
    """Replace NaN and infinities, which JSON cannot hold, with None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
