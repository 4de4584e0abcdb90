"""The README is the front door: its Python example runs, and .ci/run runs its test command."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    block = next(b for b in _python_blocks() if "Pipeline" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    run = namespace["run"]
    statuses = {p.name: (p.status, p.stats) for p in run.report.passes}
    assert statuses["fold-bn"][0] == "applied" and statuses["fold-bn"][1]["bn_folded"] > 0
    assert run.report.fidelity.max_rel <= 1e-5
    assert (tmp_path / "resnet18-tiny.opt.onnx").is_file()
    dry = namespace["report"].passes[1]
    assert dry.name == "drop-double-relu" and dry.status == "unchanged"
    bench = namespace["bench"]
    assert [e.name for e in bench.entries] == ["original", "optimized"]
    assert bench.entries[1].fidelity.max_rel <= 1e-5 and bench.entries[1].params < bench.entries[0].params
    out = capsys.readouterr().out
    assert "fold-bn" in out and "round ratio" in out
    q = namespace["q"]
    assert q.status in ("applied", "unchanged") and q.details["speed"]["pays"] == (q.status == "applied")
    assert namespace["int8"].report.deployed == (q.status == "applied")


def test_the_search_example_calls_the_real_api():
    """The search example needs the user's files, so it is not run here: it compiles, and every
    keyword it passes is a parameter of onnxopt.search."""
    import ast
    import inspect

    import onnxopt
    block = next(b for b in _python_blocks() if "onnxopt.search(" in b)
    tree = ast.parse(block)
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "search")
    # the public callable's signature, as a notebook's call tip shows it (not *args, **kwargs)
    parameters = inspect.signature(onnxopt.search).parameters
    assert {k.arg for k in call.keywords} <= set(parameters) and len(call.args) == 2
    result_fields = {"best", "spec", "front", "trials"}
    assert result_fields <= set(inspect.signature(onnxopt.search.run.SearchResult).parameters)


def test_ci_runs_the_readme_test_command():
    commands = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    demo, tests = (c.split("#")[0].strip() for c in commands[:2])
    assert demo == "pip install -e . && onnxopt demo"
    assert tests == 'pip install -e ".[test]" && pytest'
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == tests
