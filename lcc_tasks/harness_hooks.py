"""Functions that ``lcc_startup`` runs right after lm_eval imports one of its modules.

They use only the standard library and lm_eval itself, so a broken torch or a broken
``lcc_models`` cannot stop lm_eval from starting. The model class is registered as a lazy
``"module:object"`` path, which the harness imports only when a user asks for
``lcc_compressed``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

MODEL_NAME = "lcc_compressed"
MODEL_TARGET = "lcc_models.compressed_lm:CompressedHFLM"


def task_folder() -> Path:
    """Return the folder of lcc's task YAML files, installed or in a source checkout."""
    spec = importlib.util.find_spec("lcc_tasks")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the lcc_tasks package is not importable")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    # A wheel installs the configs inside the package; a checkout keeps them at the top.
    for candidate in (package_dir / "task_configs", package_dir.parent / "task_configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no task_configs folder next to {package_dir}")


def register_models(registry_module: ModuleType) -> None:
    """Register ``lcc_compressed`` as a lazy entry of the harness's model registry."""
    # get_model() imports the harness's own lazy model table only while the registry is
    # empty, so that table must be loaded before lcc's entry makes the registry non-empty.
    import lm_eval.models  # noqa: F401

    registry = registry_module.model_registry
    if MODEL_NAME not in registry:
        registry.register(MODEL_NAME, target=MODEL_TARGET)


def explain_kl_requests(model_module: ModuleType) -> None:
    """Give every harness model a ``kl_divergence`` that explains which model serves it.

    The harness calls ``getattr(lm, request_type)``; without this, running a KL task on
    ``--model hf`` would end in a bare AttributeError. ``lcc_compressed`` overrides it.
    """
    base_class = model_module.LM
    if hasattr(base_class, "kl_divergence"):
        return

    def kl_divergence(self, requests):
        task_names = sorted({request.task_name for request in requests})
        raise NotImplementedError(
            f"{type(self).__name__} cannot serve the KL tasks {task_names}: they compare a compressed model "
            f"with its reference and run only on --model {MODEL_NAME} (same --model_args as --model hf, plus "
            "compression keys such as w_bits=4)."
        )

    base_class.kl_divergence = kl_divergence


def add_task_folder(manager_module: ModuleType) -> None:
    """Make every ``TaskManager`` that includes the harness's tasks include lcc's too."""
    task_manager = manager_module.TaskManager
    if getattr(task_manager.__init__, "_lcc_wrapped", False):
        return
    original_init = task_manager.__init__
    signature = inspect.signature(original_init)
    for parameter in ("include_path", "include_defaults"):
        if parameter not in signature.parameters:
            raise TypeError(f"TaskManager.__init__ has no '{parameter}' parameter in this lm_eval release")
    folder = task_folder()

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        if bound.arguments["include_defaults"]:
            bound.arguments["include_path"] = _prepend_path(folder, bound.arguments["include_path"])
        original_init(*bound.args, **bound.kwargs)

    __init__._lcc_wrapped = True
    task_manager.__init__ = __init__


def _prepend_path(folder: Path, include_path) -> list:
    """Put lcc's folder first, so that a user's ``--include_path`` can override its tasks."""
    if include_path is None:
        user_paths = []
    elif isinstance(include_path, (list, tuple)):
        user_paths = list(include_path)
    else:
        user_paths = [include_path]
    resolved = folder.resolve()
    user_paths = [path for path in user_paths if Path(path).resolve() != resolved]
    return [folder, *user_paths]


def save_curves_with_results(tracker_module: ModuleType) -> None:
    """Write the per-position KL curves beside each results file that the harness saves."""
    tracker_class = tracker_module.EvaluationTracker
    if getattr(tracker_class.save_results_aggregated, "_lcc_wrapped", False):
        return
    original_save = tracker_class.save_results_aggregated

    @functools.wraps(original_save)
    def save_results_aggregated(self, results: dict, samples: dict | None = None) -> None:
        original_save(self, results=results, samples=samples)
        if not self.output_path or not isinstance(results, dict):
            return
        from lcc_tasks import curves

        curves.write_curve_file(self, results)

    save_results_aggregated._lcc_wrapped = True
    tracker_class.save_results_aggregated = save_results_aggregated


def use_bootstrap_stderr(evaluator_utils_module: ModuleType) -> None:
    """Let the harness report the document-level bootstrap stderr of lcc's KL aggregations.

    The harness computes a metric's stderr only for the aggregation functions on its own list. An
    lcc aggregation that has a ``bootstrap_stderr(items)`` method gets it from there; a
    harness ``--bootstrap_iters 0`` still turns every stderr off.
    """
    original = evaluator_utils_module.stderr_for_metric
    if getattr(original, "_lcc_wrapped", False):
        return

    @functools.wraps(original)
    def stderr_for_metric(metric, bootstrap_iters):
        stderr = getattr(metric, "bootstrap_stderr", None)
        if stderr is not None and bootstrap_iters > 0:
            return stderr
        return original(metric=metric, bootstrap_iters=bootstrap_iters)

    stderr_for_metric._lcc_wrapped = True
    evaluator_utils_module.stderr_for_metric = stderr_for_metric


def use_harness_logging() -> None:
    """Send lcc's log records through the handlers that ``lm_eval`` set up, at its level.

    The harness configures only its own ``lm_eval`` logger, so without this lcc's INFO
    messages (the compression summary, where the text came from) would not appear on the
    command line. Does nothing when the harness has configured no handler, or when the
    application has already configured lcc's loggers.
    """
    harness_logger = logging.getLogger("lm_eval")
    if not harness_logger.handlers:
        return
    for name in ("lcc_models", "lcc_tasks"):
        package_logger = logging.getLogger(name)
        if package_logger.handlers:
            continue
        package_logger.setLevel(harness_logger.level)
        for handler in harness_logger.handlers:
            package_logger.addHandler(handler)
        package_logger.propagate = False
