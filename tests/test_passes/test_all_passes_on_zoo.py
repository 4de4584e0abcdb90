"""Every registered exact pass that needs no data runs on every tiny zoo model through the
verifying pipeline: nothing fails, nothing is rolled back, outputs stay within 1e-5. (Lossy
passes, prune and quantize, have their own fidelity tests.)"""
from __future__ import annotations

import pytest

from onnxopt import available_passes, models
from onnxopt.pipeline.run import Pipeline

TINY = [n for n in models.available() if n.endswith("-tiny") or n.endswith("-tiny-deploy")]
PASSES = sorted(name for name, cls in available_passes().items() if not cls.needs_data and cls.exact)


@pytest.mark.parametrize("model_name", TINY)
def test_every_pass_on_every_tiny_model(model_name):
    model = models.build(model_name)
    passes = [available_passes()[name]() for name in PASSES]
    run = Pipeline(passes, rtol=1e-5).run(model)
    bad = [(p.name, p.status, p.message) for p in run.report.passes if p.status in ("failed", "rolled-back")]
    assert not bad
    if run.report.changed:
        assert run.report.fidelity.max_rel <= 1e-5
        assert run.report.fidelity.top1_agreement == 1.0
