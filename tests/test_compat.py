"""The module paths of onnxopt 0.1 still import for one release, with a DeprecationWarning naming
the new home, and forward every name (a plugin's `from onnxopt.registry import register_pass`
keeps working); the layer packages answer their old flat names without a warning."""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from onnxopt import compat


@pytest.mark.parametrize("old", sorted(compat.MOVED))
def test_every_old_path_warns_and_forwards(old):
    code = (f"import warnings\nwarnings.simplefilter('always')\nwith warnings.catch_warnings(record=True) as w:\n"
            f"    import {old} as m\nprint([str(x.message) for x in w if x.category is DeprecationWarning])\n"
            f"print(sorted(n for n in dir(importlib.import_module('{compat.MOVED[old][0]}')) if not n.startswith('_'))[:1])")
    out = subprocess.run([sys.executable, "-c", "import importlib\n" + code], capture_output=True, text=True,
                         check=True).stdout
    assert f"{old} is now {compat.MOVED[old][0]}" in out


def test_old_names_reach_the_objects_they_named():
    from onnxopt.pipeline.registry import register_pass
    from onnxopt.pipeline.spec import parse_spec
    from onnxopt.text import table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        registry = importlib.import_module("onnxopt.registry")
        report = importlib.import_module("onnxopt.report")
    assert registry.register_pass is register_pass and registry.parse_spec is parse_spec
    assert report.table is table
    with pytest.raises(AttributeError, match="now onnxopt.pipeline.spec"):
        registry.no_such_name  # noqa: B018


def test_layer_packages_answer_their_old_flat_names_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from onnxopt.data import FeedSet, load_feeds
        from onnxopt.graph import Graph, named_dynamic_dims
        from onnxopt.pipeline import Pass, Pipeline, register_pass
        from onnxopt.runtime import run_model, this_cpu
    from onnxopt.data.feeds import FeedSet as feeds_feedset
    from onnxopt.pipeline.run import Pipeline as run_pipeline
    assert FeedSet is feeds_feedset and Pipeline is run_pipeline
    assert all(callable(x) for x in (load_feeds, Graph, named_dynamic_dims, Pass, register_pass, run_model, this_cpu))
    with pytest.raises(ImportError):
        from onnxopt.graph import no_such_name  # noqa: F401
