"""The start-up hook: cheap at every Python start, harmless when lcc or torch is broken."""

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest


def run_python(code: str, extra_path: str | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, outside the checkout so that only installed lcc is found."""
    environment = dict(os.environ)
    if extra_path:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, environment.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        cwd=extra_path or tempfile.gettempdir(),
    )


def hook_is_installed() -> bool:
    import lcc_startup

    return any(isinstance(finder, lcc_startup._HarnessModuleFinder) for finder in sys.meta_path)


@pytest.fixture(autouse=True)
def require_installed_hook():
    if not hook_is_installed():
        pytest.skip("lcc_startup.pth is not active in this interpreter: install the package with pip install .")


def test_python_start_imports_nothing_heavy():
    completed = run_python(
        """
        import sys
        heavy = sorted(name for name in ("torch", "numpy", "transformers", "lm_eval", "lcc_models", "lcc_tasks") if name in sys.modules)
        print(heavy, "lcc_startup" in sys.modules)
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[] True"


def test_registry_gets_lazy_model_without_torch():
    completed = run_python(
        """
        import sys
        from lm_eval.api.registry import model_registry, get_model
        print("lcc_compressed" in model_registry, "hf" in model_registry, "torch" in sys.modules)
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "True True False"


def test_broken_lcc_package_warns_once_and_steps_aside(tmp_path):
    broken = tmp_path / "lcc_tasks"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('simulated broken lcc_tasks')\n")
    completed = run_python(
        """
        from lm_eval.api.registry import get_model, model_registry
        import lm_eval.tasks.manager
        import lm_eval.loggers.evaluation_tracker
        print(get_model("dummy").__name__, "lcc_compressed" in model_registry)
        """,
        extra_path=str(tmp_path),
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "DummyLM False"
    assert completed.stderr.count("lcc could not plug into lm_eval") == 1
    assert "simulated broken lcc_tasks" in completed.stderr


def test_broken_torch_leaves_python_and_registry_working(tmp_path):
    fake_torch = tmp_path / "torch"
    fake_torch.mkdir()
    (fake_torch / "__init__.py").write_text("raise ImportError('simulated broken torch')\n")
    completed = run_python(
        """
        from lm_eval.api.registry import model_registry
        print("lcc_compressed" in model_registry)
        """,
        extra_path=str(tmp_path),
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "True"
    assert "lcc could not plug" not in completed.stderr
