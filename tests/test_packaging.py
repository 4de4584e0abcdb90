"""Packaging guards (style.md §10.6): `passes/` and `models/` install only inside the onnxopt
namespace, every package folder is listed for the wheel, and nothing shadows the mapped packages."""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import tomllib

import onnxopt

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def python(code: str, cwd: Path | str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def test_package_dir_maps_passes_and_models_into_onnxopt():
    assert SETUPTOOLS["package-dir"] == {"onnxopt": "onnxopt", "onnxopt.passes": "passes",
                                         "onnxopt.models": "models"}


def test_every_package_dir_is_listed_in_pyproject():
    """A subpackage missing from `packages` works editable but is silently left out of the wheel."""
    on_disk = {
        ".".join((pkg, *init.parent.relative_to(ROOT / src).parts))
        for pkg, src in SETUPTOOLS["package-dir"].items()
        for init in (ROOT / src).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert {"onnxopt", "onnxopt.passes"} <= on_disk
    listed = set(SETUPTOOLS["packages"])
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"


def test_every_listed_package_exists_on_disk():
    roots = sorted(SETUPTOOLS["package-dir"].items(), key=lambda kv: -len(kv[0]))
    for pkg in SETUPTOOLS["packages"]:
        prefix, src = next((p, s) for p, s in roots if pkg == p or pkg.startswith(p + "."))
        folder = ROOT / src / Path(*pkg[len(prefix):].lstrip(".").split(".")) if pkg != prefix else ROOT / src
        if not folder.is_dir() and prefix == "onnxopt.models":
            pytest.skip("models/ (the zoo) is not in yet")
        assert (folder / "__init__.py").is_file(), f"{pkg} is listed but {folder}/__init__.py is missing"


def test_no_top_level_passes_or_models_installed():
    """From a neutral directory only the onnxopt-namespaced packages exist."""
    r = python("import importlib.util as u; "
               "print(u.find_spec('passes'), u.find_spec('models'), u.find_spec('onnxopt.passes').origin)",
               cwd="/tmp")
    assert r.returncode == 0, r.stderr
    top_passes, top_models, origin = r.stdout.split()
    assert (top_passes, top_models) == ("None", "None")
    assert Path(origin) == ROOT / "passes" / "__init__.py"


def test_import_passes_from_the_repo_root_fails():
    """With the repo root on sys.path (`python -c`, `python -m pytest`) `passes/` is found as a
    top-level package; its guard must refuse, or the passes would register twice."""
    r = python("import passes", cwd=ROOT)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(("ModuleNotFoundError", "ImportError")), r.stderr
    # and the namespaced import still works in the same situation
    r = python("import onnxopt.passes as p, onnxopt; print(p.__name__, sorted(onnxopt.available_passes())[:1])",
               cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "onnxopt.passes"


def test_passes_package_identity():
    import onnxopt.passes

    assert onnxopt.passes.__name__ == "onnxopt.passes"
    assert Path(onnxopt.passes.__file__).resolve() == ROOT / "passes" / "__init__.py"
    assert "passes" not in sys.modules


def test_models_package_identity():
    try:
        import onnxopt.models
    except ImportError:
        pytest.skip("onnxopt.models (the zoo) is not in yet")
    assert onnxopt.models.__name__ == "onnxopt.models"
    assert Path(onnxopt.models.__file__).resolve() == ROOT / "models" / "__init__.py"
    assert "models" not in sys.modules


@pytest.mark.parametrize("path", ["onnxopt/passes.py", "onnxopt/passes", "onnxopt/models.py", "onnxopt/models",
                                  "tests/passes", "tests/models"])
def test_nothing_shadows_the_mapped_packages(path):
    """onnxopt/passes(.py) would shadow the mapped package under the editable finder;
    tests/passes would become a namespace package named `passes` (style.md §10.6, trap 3)."""
    assert not (ROOT / path).exists()


def test_version_and_console_script_agree_with_pyproject():
    assert onnxopt.__version__ == PYPROJECT["project"]["version"]
    assert importlib.metadata.version("onnxopt") == PYPROJECT["project"]["version"]
    target = PYPROJECT["project"]["scripts"]["onnxopt"]
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("onnxopt") == target
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def _zoo_committed() -> bool:
    r = subprocess.run(["git", "ls-files", "--error-unmatch", "models/__init__.py"], cwd=ROOT,
                       capture_output=True, text=True)
    return r.returncode == 0


def test_demo_fixture_is_shipped():
    try:
        from onnxopt.models import DEMO_MODEL, fixture_path
    except ImportError:
        pytest.skip("onnxopt.models (the zoo) is not in yet")
    try:
        path = fixture_path(DEMO_MODEL)
    except FileNotFoundError as exc:
        if not _zoo_committed():
            pytest.skip(f"the zoo is not committed yet: {exc}")
        raise
    assert path.is_file()
    assert path.parent == ROOT / "models" / "fixtures"
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["onnxopt.models.fixtures"]
    assert any(path.match(p) for p in patterns), f"{path.name} is not package data ({patterns})"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
