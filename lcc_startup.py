"""Start-up hook that plugs lcc into lm-evaluation-harness without ``--include_path``.

    lm_eval --model lcc_compressed --model_args pretrained=lcc-tiny-llama,w_bits=3 --tasks lcc_demo_kl
    lm_eval ls tasks | grep _kl

lm-eval 0.4.13 has no entry points for models or tasks, so ``lcc_startup.pth`` (installed
beside this file in site-packages) calls :func:`install` when Python starts. It only puts a
finder on ``sys.meta_path``, which costs well under a millisecond and imports nothing.
When lm_eval later imports one of the modules in ``_HOOKS``, the finder lets that module
load as usual and then calls the matching function in :mod:`lcc_tasks.harness_hooks`.
Those functions register the ``lcc_compressed`` model lazily, add lcc's task folder to
every ``TaskManager``, write the KL curve files beside the harness's results, and make
other models reject the KL tasks with an error that names ``lcc_compressed``.

If any of that fails (lcc or torch broken, a harness release with other internals), the
hook logs one warning and steps aside: ``python`` and ``lm_eval`` keep working without lcc.
"""

import sys

# Harness module -> function in lcc_tasks.harness_hooks that runs once it has loaded.
_HOOKS = {
    "lm_eval.api.model": "explain_kl_requests",
    "lm_eval.api.registry": "register_models",
    "lm_eval.tasks.manager": "add_task_folder",
    "lm_eval.loggers.evaluation_tracker": "save_curves_with_results",
    "lm_eval.evaluator_utils": "use_bootstrap_stderr",
}
_warned = False


class _HarnessModuleFinder:
    """Meta path finder that runs lcc's hook after a watched harness module executes."""

    def find_spec(self, fullname, path=None, target=None):
        hook_name = _HOOKS.get(fullname)
        if hook_name is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute_module = loader.exec_module

        def exec_module(module):
            execute_module(module)
            _run_hook(hook_name, module)

        # The loader instance belongs to this one spec, so shadowing its method here
        # changes how this module loads and nothing else.
        loader.exec_module = exec_module
        return spec


def _run_hook(hook_name, module):
    try:
        from lcc_tasks import harness_hooks

        getattr(harness_hooks, hook_name)(module)
    except Exception as error:  # noqa: BLE001 - a broken plugin must never break lm_eval
        _warn_once(error)


def _warn_once(error):
    global _warned
    if _warned:
        return
    _warned = True
    import logging

    logging.getLogger("lcc").warning(
        "lcc could not plug into lm_eval (%s: %s); lm_eval runs without the lcc_compressed "
        "model and the lcc KL tasks. Reinstall lcc (pip install --force-reinstall lcc) to fix it.",
        type(error).__name__,
        error,
    )


def install():
    """Put the finder first on ``sys.meta_path``; calling it again does nothing."""
    if not any(isinstance(finder, _HarnessModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HarnessModuleFinder())
