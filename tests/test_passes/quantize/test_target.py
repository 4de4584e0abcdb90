"""quantize per CPU: the CPU's integer kind, the target's format (pair-bounded weights where u8 x s8
saturates), fidelity as deployed, and int8 only where it pays.

No test here assumes an instruction set: what depends on the CPU is forced with `target`, and the
tests that run integer kernels hold on VNNI and non-VNNI CPUs alike. The few that can only show
something on one kind say so when they skip.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxopt.errors import BadData
from onnxopt.measure.timing import machine
from onnxopt.passes import Quantize
from onnxopt.passes.quantize import speed, target
from onnxopt.passes.quantize.scheme import quantize_weight, weight_qparams
from onnxopt.pipeline.run import Pipeline
from onnxopt.runtime import cpu
from onnxopt.runtime.fidelity import compare
from onnxopt.runtime.sessions import run_model
from onnxopt.testing import apply, assert_one_line_error, count_ops, make_model, run_cli

F32 = np.float32
SATURATES = cpu.u8s8_saturates()

VNNI_EPYC = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni fma\n"
AVX2_EPYC = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n"
ALDER_LAKE = "model name\t: 12th Gen Intel(R) Core(TM) i7\nflags\t\t: avx2 avx_vnni\n"
SAPPHIRE = "model name\t: Intel Xeon Platinum 8480\nflags\t\t: avx2 avx512bw amx_int8 amx_tile\n"
SKYLAKE_X = "model name\t: Intel Xeon Gold 6148\nflags\t\t: avx2 avx512f avx512bw\n"
OLD_X86 = "model name\t: Intel Atom\nflags\t\t: sse sse2 ssse3\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp i8mm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize("text, arch, kind, flags", [
    (VNNI_EPYC, "x86_64", "x86-vnni", {"avx2", "avx512bw", "avx512_vnni"}),
    (AVX2_EPYC, "x86_64", "x86-avx2", {"avx2"}),
    (ALDER_LAKE, "x86_64", "x86-vnni", {"avx2", "avx_vnni"}),
    (SAPPHIRE, "x86_64", "x86-vnni", {"avx2", "avx512bw", "amx_int8"}),
    (SKYLAKE_X, "x86_64", "x86-avx512", {"avx2", "avx512bw"}),
    (OLD_X86, "x86_64", "x86", set()),
    (GRAVITON, "arm64", "arm64", {"asimddp", "i8mm"}),
], ids=["vnni-epyc", "avx2-epyc", "avx-vnni", "amx", "avx512-no-vnni", "sse-only", "arm64"])
def test_cpu_kind_from_cpuinfo(text, arch, kind, flags):
    info = cpu.parse_cpuinfo(text, arch)
    assert info.kind == kind and set(info.flags) == flags
    assert kind in info.describe() and info.as_dict()["kind"] == kind


def test_probe_agrees_with_the_flags_on_this_machine():
    """onnxruntime's u8 x s8 kernel saturates exactly where the flags say VPMADDUBSW is all there is."""
    kind = cpu.this_cpu().kind
    if kind == "x86-vnni":
        assert SATURATES is False
    elif kind in ("x86-avx2", "x86-avx512"):
        assert SATURATES is True
    elif kind == "arm64":
        assert SATURATES in (False, None)
    summary = cpu.cpu_summary()
    assert summary["kind"] == kind and summary["u8s8_saturates"] == SATURATES
    assert machine()["cpu_kind"] == kind and kind in machine()["cpu"]


@pytest.mark.parametrize("kind, probe, expected", [
    ("x86-vnni", False, "x86-vnni"), ("x86-avx2", True, "x86-avx2"), ("x86-avx512", True, "x86-avx512"),
    ("x86-avx2", False, "x86-vnni"),   # the probe says exact: the kernels are what runs
    ("x86-vnni", True, "x86-avx2"),
    ("x86-avx2", None, "x86-avx2"),    # no probe: the flags decide
    ("x86", None, "x86-avx2"),         # unknown x86 kernels: bounded, the safe side
])
def test_native_target_follows_flags_and_probe(monkeypatch, kind, probe, expected):
    flags = {"x86-vnni": ["avx2", "avx512_vnni"], "x86-avx2": ["avx2"], "x86-avx512": ["avx2", "avx512bw"], "x86": []}
    monkeypatch.setattr(target, "this_cpu", lambda: cpu.CpuInfo("x86_64", "test", frozenset(flags[kind])))
    monkeypatch.setattr(target, "u8s8_saturates", lambda: probe)
    assert target.native_target().name == expected
    got, native = target.resolve("auto")
    assert got.name == expected and native
    assert target.resolve("x86-vnni")[1] == (not target.TARGETS[expected].pair_bound)


def test_arm_targets_int8_activations(monkeypatch):
    monkeypatch.setattr(target, "this_cpu", lambda: cpu.CpuInfo("arm64", "test", frozenset({"asimddp"})))
    t = target.native_target()
    assert t.name == "arm64" and t.activations == "int8" and not t.pair_bound
    with pytest.raises(BadData, match="unknown target 'x86-sse'.*auto, x86-vnni, x86-avx512, x86-avx2, arm64"):
        target.resolve("x86-sse")


def _worst_same_sign_pair(wq: np.ndarray) -> np.ndarray:
    """Per channel (rows): the largest |q1| + |q2| over two weights of the same sign."""
    wq = wq.astype(np.int32)
    return np.maximum(*[(-np.partition(-np.maximum(sign * wq, 0), 1, axis=1)[:, :2]).sum(1) for sign in (1, -1)])


def test_pair_bound_keeps_every_same_sign_pair_inside_int16():
    """u8 activations are never negative, so only same-sign weight pairs can leave int16."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32, 3, 3)).astype(F32)
    w[5, 3, 1, 1] = 40.0                      # a channel with one outlier
    w[6] = 0.0                                # an all-zero channel
    w[7] = 0.0
    w[7, 0, 0, :2] = [9.0, -9.0]              # its two largest differ in sign: 8-bit stays safe
    plain, bounded = weight_qparams(w, 0), weight_qparams(w, 0, pair_bound=True)
    assert _worst_same_sign_pair(quantize_weight(w, plain).reshape(64, -1)).max() > 128  # what saturates
    assert (_worst_same_sign_pair(quantize_weight(w, bounded).reshape(64, -1)) <= 128).all()
    reduce_range = np.abs(w).reshape(64, -1).max(1) / 64   # onnxruntime's reduce_range: [-64, 64]
    live = reduce_range > 0
    assert (bounded.scale[live] <= reduce_range[live] * 1.0001).all()  # never coarser than reduce_range
    assert bounded.scale[5] < 0.6 * reduce_range[5]        # finer where one weight stands out
    assert bounded.scale[7] == pytest.approx(plain.scale[7])  # and 8-bit where the top two differ in sign
    assert bounded.scale[6] == 1.0
    assert (weight_qparams(w, 0, bits=7, pair_bound=True).scale >= np.abs(w).reshape(64, -1).max(1) / 63 * 0.9999).all()
    per_tensor = weight_qparams(w, None, pair_bound=True)
    assert per_tensor.scale.shape == ()
    assert _worst_same_sign_pair(quantize_weight(w, per_tensor).reshape(1, -1)).max() <= 128


# -- a model that saturates: 255 x 127 in every product ------------------------------------------

def _saturating_model() -> tuple[onnx.ModelProto, list[dict], list[dict]]:
    """Conv 1x1 over 32 channels whose weights are all near +1 (each quantizes to about 127) on
    inputs near the top of their range (uint8 about 255): every int16 pair sum of VPMADDUBSW
    overflows, so without VNNI a plain 8-bit model's output is about halved."""
    rng = np.random.default_rng(3)
    w = (1.0 + 0.05 * rng.standard_normal((8, 32, 1, 1))).astype(F32)
    b = np.zeros(8, F32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, {"w": w, "b": b}, [("x", [1, 32, 4, 4])], [("y", [1, 8, 4, 4])])
    calib = [{"x": rng.uniform(0.9 if i % 3 == 0 else 0, 1, (1, 32, 4, 4)).astype(F32)} for i in range(24)]
    test = [{"x": rng.uniform(0.9, 1, (1, 32, 4, 4)).astype(F32)} for _ in range(4)]
    return model, calib, test


def _deployed_error(float_model, quantized, feeds) -> float:
    return compare(run_model(float_model, feeds), run_model(quantized, feeds, optimization="all")).max_rel


def test_pair_bounded_target_holds_on_any_cpu():
    """target=x86-avx2 (pair-bounded weights) gives the float answer to within rounding as
    onnxruntime deploys it, whatever this CPU: on one without VNNI this is the saturation fixed."""
    model, calib, test = _saturating_model()
    out, result = apply(Quantize(calibration=calib, target="x86-avx2", speed=False, holdback=4), model)
    assert result.details["fusion"]["integer_ops"] == {"QLinearConv": 1}
    assert result.details["fusion"]["saturating"] == []
    assert result.details["pair_bounded_weights"] is True
    assert _deployed_error(model, out, test) < 0.02


def _layer(kind: str) -> tuple[onnx.ModelProto, list[dict], list[dict]]:
    """One weighted op whose 8-bit weights are all near +127 on inputs near 255 (see _saturating_model)."""
    rng = np.random.default_rng(5)
    c = 32
    near_one = lambda *shape: (1.0 + 0.05 * rng.standard_normal(shape)).astype(F32)  # noqa: E731
    if kind.startswith("Conv"):
        group, mult = {"Conv": (1, 8), "Conv-depthwise": (c, 1), "Conv-multiplier2": (c, 2)}[kind]
        w = near_one(group * mult if group > 1 else mult, c // group, 3, 3)
        node = helper.make_node("Conv", ["x", "w"], ["y"], name="op", group=group, pads=[1, 1, 1, 1])
        x_shape, y_shape = [1, c, 4, 4], [1, w.shape[0], 4, 4]
    elif kind.startswith("Gemm"):
        trans = int(kind.endswith("transB"))
        w = near_one(8, c) if trans else near_one(c, 8)
        node = helper.make_node("Gemm", ["x", "w"], ["y"], name="op", transB=trans)
        x_shape, y_shape = [1, c], [1, 8]
    else:
        w = near_one(c, 8)
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="op")
        x_shape, y_shape = [1, c], [1, 8]
    model = make_model([node], {"w": w}, [("x", x_shape)], [("y", y_shape)])
    calib = [{"x": rng.uniform(0.9 if i % 3 == 0 else 0, 1, x_shape).astype(F32)} for i in range(24)]
    test = [{"x": rng.uniform(0.9, 1, x_shape).astype(F32)} for _ in range(4)]
    return model, calib, test


@pytest.mark.parametrize("kind", ["Conv", "Conv-depthwise", "Conv-multiplier2", "Gemm", "Gemm-transB", "MatMul"])
def test_every_kernel_kind_holds_with_the_pair_bound_and_the_audit_knows_which_pair(kind):
    """Each integer kernel onnxruntime makes: pair-bounded weights give the float answer as deployed on
    any CPU; the 8-bit VNNI format is named by the audit exactly where the kernel pairs products (a
    depthwise conv widens to int32 first, so it keeps 8-bit weights under the bound too) and, on a
    CPU that saturates, is wrong exactly there."""
    model, calib, test = _layer(kind)
    bounded, r_bounded = apply(Quantize(calibration=calib, target="x86-avx2", speed=False, holdback=4), model)
    vnni, r_vnni = apply(Quantize(calibration=calib, target="x86-vnni", speed=False, holdback=4), model)
    assert sum(r_bounded.details["fusion"]["integer_ops"].values()) >= 1
    assert r_bounded.details["fusion"]["saturating"] == []
    assert _deployed_error(model, bounded, test) < 0.02
    pairs = kind != "Conv-depthwise"
    assert r_vnni.details["fusion"]["saturating"] == (["op"] if pairs else [])
    same_weights = all(np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
                       for a, b in zip(bounded.graph.initializer, vnni.graph.initializer) if a.name.endswith("quantized"))
    assert same_weights == (not pairs)
    if SATURATES:
        assert (_deployed_error(model, vnni, test) > 0.3) == pairs
    else:
        assert _deployed_error(model, vnni, test) < 0.02


def test_vnni_format_on_this_cpu_is_right_only_where_products_are_exact():
    model, calib, test = _saturating_model()
    out, result = apply(Quantize(calibration=calib, target="x86-vnni", speed=False, holdback=4), model)
    assert result.details["fusion"]["saturating"] == ["conv"]
    error = _deployed_error(model, out, test)
    if SATURATES:
        assert error > 0.3, "a CPU whose probe saturates gave exact 8-bit products"
        assert any("weight pairs beyond int16" in n for n in result.notes)
    else:
        assert error < 0.02


@pytest.mark.skipif(not SATURATES, reason="u8 x s8 products are exact on this CPU: nothing saturates to show")
def test_cli_headline_is_the_deployed_fidelity(capsys, tmp_path):
    """A model made in the VNNI format on a CPU that saturates: the headline says how far the outputs
    moved as onnxruntime runs them here, not the float reference kernels' near-perfect number."""
    model, calib, _ = _saturating_model()
    path, data, report = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "r.json"
    onnx.save(model, path)
    high = np.random.default_rng(4).uniform(0.9, 1, (2, 32, 4, 4)).astype(F32)  # the verification samples
    np.savez(data, x=np.concatenate([c["x"] for c in calib] + [high]))
    code, out, err = run_cli(capsys, "run", path, "--passes", "quantize:target=x86-vnni,speed=false,holdback=4",
                             "--calib", data, "-o", tmp_path / "q.onnx", "--report", report)
    assert code == 0, err
    headline = next(line for line in out.splitlines() if line.startswith("fidelity vs original"))
    assert "as deployed" in headline and cpu.this_cpu().kind in headline
    doc = json.loads(report.read_text())
    assert doc["fidelity_measured"].startswith("as deployed")
    assert doc["fidelity"]["max_rel"] > 0.3 > 0.05 > doc["reference_fidelity"]["max_rel"]
    assert doc["cpu"]["u8s8_saturates"] is True
    assert any("not for this CPU" in n for n in doc["passes"][0]["notes"])


def test_exact_passes_keep_the_reference_kernel_check(capsys, tmp_path):
    model, _, _ = _saturating_model()
    path, report = tmp_path / "m.onnx", tmp_path / "r.json"
    onnx.save(model, path)
    code, out, err = run_cli(capsys, "run", path, "--passes", "fold-bn,cleanup", "-o", tmp_path / "o.onnx",
                             "--report", report)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["reference_fidelity"] is None and doc["cpu"]["kind"] == cpu.this_cpu().kind


def test_lossy_headline_is_deployed_in_the_python_api():
    model, calib, _ = _saturating_model()
    run = Pipeline([Quantize(target="x86-avx2", speed=False, holdback=4)], calibration=calib).run(model)
    assert run.report.deployed and run.report.reference_fidelity is not None
    assert run.report.as_dict()["fidelity_measured"].startswith("as deployed")
    assert run.report.fidelity.max_rel < 0.05


def test_target_for_another_cpu_is_said_and_not_timed():
    model, calib, _ = _saturating_model()
    here = target.native_target()
    other = "x86-vnni" if here.pair_bound or here.activations == "int8" else "x86-avx2"
    out, result = apply(Quantize(calibration=calib, target=other, holdback=4), model)
    assert result.changed and "speed" not in result.details
    assert result.details["target"]["name"] == other and result.details["target"]["native"] is False
    assert any(n.startswith(f"warning: made for {other}, not for this CPU") for n in result.notes)


def test_unknown_target_is_a_one_line_error(capsys, tmp_path):
    model, _, _ = _saturating_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    got = run_cli(capsys, "run", path, "--passes", "quantize:target=x86-sse", "--calib", "random",
                  "-o", tmp_path / "o.onnx")
    assert_one_line_error(*got, 2, "target", "x86-sse", "auto", "x86-vnni", "x86-avx512", "x86-avx2", "arm64")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_inspect_fusion_names_saturating_kernels(capsys, tmp_path):
    model, calib, _ = _saturating_model()
    for name in ("x86-vnni", "x86-avx2"):
        out, _ = apply(Quantize(calibration=calib, target=name, speed=False, holdback=4), model)
        onnx.save(out, tmp_path / f"{name}.onnx")
    code, text, err = run_cli(capsys, "inspect", "--fusion", tmp_path / "x86-vnni.onnx")
    assert code == 0, err
    assert "weight pairs beyond int16 in 1 integer kernel(s) (conv)" in text and "this CPU:" in text
    code, text, err = run_cli(capsys, "inspect", "--fusion", tmp_path / "x86-avx2.onnx")
    assert "no weight pair beyond int16" in text
    code, text, err = run_cli(capsys, "inspect", "--fusion", "--json", tmp_path / "x86-vnni.onnx")
    doc = json.loads(text)
    assert doc["fusion"]["saturating"] == ["conv"] and doc["cpu"]["kind"] == cpu.this_cpu().kind
    # as on a named CPU instead of this one: whether its products saturate is that CPU's
    code, text, err = run_cli(capsys, "inspect", "--fusion", "--target", "x86-avx2", tmp_path / "x86-vnni.onnx")
    assert code == 0, err
    assert "(conv): u8 x s8 products saturate on x86 without VNNI; x86-avx2 saturates" in text
    code, text, err = run_cli(capsys, "inspect", "--fusion", "--target", "x86-vnni", tmp_path / "x86-vnni.onnx")
    assert code == 0, err
    assert "; x86-vnni does not" in text and "this CPU (" not in text


# -- int8 only where it pays: the decisions, with latencies made up so they hold on any CPU --------

def _chain(n: int = 6) -> tuple[onnx.ModelProto, list[dict]]:
    rng = np.random.default_rng(1)
    nodes, inits, x = [], {}, "x"
    for i in range(n):
        inits[f"w{i}"] = (0.3 * rng.standard_normal((8, 8, 3, 3))).astype(F32)
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    model = make_model(nodes, inits, [("x", [1, 8, 8, 8])], [(x, [1, 8, 8, 8])])
    return model, [{"x": rng.standard_normal((1, 8, 8, 8)).astype(F32)} for _ in range(16)]


def _fake_latency(monkeypatch, cost) -> None:
    """speed.ratio from a made-up latency `cost(model)` instead of the clock."""
    monkeypatch.setattr(speed, "ratio", lambda a, b, feed, threads: cost(a) / cost(b))


def _int8_convs(model: onnx.ModelProto) -> set[str]:
    """Convs reading a dequantized weight: the ones that run as QLinearConv."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dq}


def test_regions_are_contiguous_runs_of_about_equal_weighted_layers():
    class U:
        def __init__(self, kind):
            self.kind = kind
    units = [U(k) for k in "wpwwbwpwwwwwwwwwwwpb".replace("w", "w,").replace("p", "p,").replace("b", "b,")
             .strip(",").split(",")]
    kinds = {"w": "weighted", "p": "pass-through", "b": "binary"}
    units = [U(kinds[u.kind]) for u in units]
    runs = speed.regions(units, 8)
    assert [u for run in runs for u in run] == units          # contiguous, in order, each unit once
    assert 1 < len(runs) <= 8
    assert all(run[0].kind == "weighted" for run in runs[1:])
    sizes = [sum(u.kind == "weighted" for u in run) for run in runs]
    assert max(sizes) - min(sizes) <= max(sizes) // 2 + 1
    assert speed.regions([], 8) == [] and len(speed.regions(units[:1], 8)) == 1


def test_slow_regions_return_to_float(monkeypatch):
    """Convs 0-1 are slower in int8, the rest faster: the first region goes back to float, the others
    stay int8, and the report names it with its measured ratio."""
    model, calib = _chain()

    def cost(m):
        fast = _int8_convs(m)
        return 10 + sum(1.0 if name in ("conv0", "conv1") else -1.0 for name in fast)
    _fake_latency(monkeypatch, cost)
    monkeypatch.setattr(speed, "REGIONS", 3)
    out, result = apply(Quantize(calibration=calib, target=target.native_target().name, holdback=4), model)
    assert result.changed
    assert _int8_convs(out) == {"conv2", "conv3", "conv4", "conv5"}
    plan = result.details["speed"]
    assert plan["pays"] and [r["kept_float"] for r in plan["regions"]] == [True, False, False]
    assert plan["int8_over_float"] == pytest.approx(6 / 10) and plan["all_int8_over_float"] == pytest.approx(8 / 10)
    assert any("conv0" in s.where and "faster with it in float" in s.reason for s in result.skipped)


def test_int8_that_does_not_pay_leaves_the_model_float(monkeypatch):
    model, calib = _chain()
    _fake_latency(monkeypatch, lambda m: 10 + 0.01 * len(_int8_convs(m)))  # int8 slightly slower everywhere
    out, result = apply(Quantize(calibration=calib, holdback=4), model)
    assert not result.changed and out is model and result.stats == {}
    assert any(n.startswith("int8 does not pay on this CPU") and "force=true" in n for n in result.notes)
    assert result.details["speed"]["pays"] is False

    forced, result = apply(Quantize(calibration=calib, holdback=4, force=True), model)
    assert result.changed and count_ops(forced)["QuantizeLinear"] > 0
    warning = next(n for n in result.notes if n.startswith("warning: force=true keeps int8"))
    assert "x the float model's latency" in warning and "cosine" in warning


def test_int8_that_pays_everywhere_is_kept_whole(monkeypatch):
    model, calib = _chain()
    _fake_latency(monkeypatch, lambda m: 10 - len(_int8_convs(m)))
    out, result = apply(Quantize(calibration=calib, holdback=4), model)
    assert result.changed and _int8_convs(out) == {f"conv{i}" for i in range(6)}
    assert not any(r["kept_float"] for r in result.details["speed"]["regions"])
    assert result.details["speed"]["int8_over_float"] == pytest.approx(0.4)


def test_the_cli_states_the_cpu(capsys, tmp_path):
    model, _ = _chain()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    code, out, err = run_cli(capsys, "run", path, "--passes", "fold-bn", "-o", tmp_path / "o.onnx")
    assert code == 0, err
    assert f"CPU {cpu.this_cpu().model} ({cpu.this_cpu().kind}" in out
    code, out, err = run_cli(capsys, "inspect", path)
    assert f"this CPU: {cpu.this_cpu().model} ({cpu.this_cpu().kind}" in out


def test_the_option_lists_every_target():
    import dataclasses
    import typing

    field = next(f for f in dataclasses.fields(Quantize.Options) if f.name == "target")
    hint = typing.get_type_hints(Quantize.Options)["target"]
    assert typing.get_args(hint) == target.NAMES and field.default == "auto"


def test_regions_that_are_not_faster_together_are_undone(monkeypatch):
    """Each region passed its own side-by-side check, but the model with them float is not faster
    than all int8 (noise that got past the 2%, or regions that interact): all int8 is kept."""
    model, calib = _chain()
    answers = iter([0.8, 0.9, 1.0, 1.0, 1.05])  # all int8 vs float, three regions, then the whole vs all int8
    monkeypatch.setattr(speed, "ratio", lambda a, b, feed, threads: next(answers))
    monkeypatch.setattr(speed, "REGIONS", 3)
    out, result = apply(Quantize(calibration=calib, holdback=4), model)
    plan = result.details["speed"]
    assert plan["undone"] and not any(r["kept_float"] for r in plan["regions"])
    assert _int8_convs(out) == {f"conv{i}" for i in range(6)} and plan["int8_over_float"] == pytest.approx(0.8)
    assert any("not faster together" in n for n in result.notes)
    assert next(answers, None) is None


def test_dry_run_says_that_int8_was_not_timed():
    model, calib = _chain()
    _, result = apply(Quantize(calibration=calib, holdback=4), model, dry_run=True)
    assert "speed" not in result.details
    assert any(n.startswith("dry run: int8 was not timed against float") for n in result.notes)


def test_a_float_verdict_after_cle_gives_back_the_model_as_it_came(monkeypatch):
    """CLE edits the graph before int8 is timed: when int8 does not pay, the pass reports no change
    and the pipeline keeps the input model, not the equalized one (nor a 'failed' status)."""
    model, calib = _chain()
    _fake_latency(monkeypatch, lambda m: 10 + 0.01 * len(_int8_convs(m)))
    run = Pipeline([Quantize(cle=True, holdback=4)], calibration=calib).run(model)
    p = run.report.passes[0]
    assert p.status == "unchanged", p.message
    assert run.model.SerializeToString() == model.SerializeToString()
    assert any(n.startswith("cle: ") for n in p.details["discarded"]["notes"])  # what was tried, set aside
    assert p.notes[-1].startswith("int8 does not pay on this CPU")


def test_every_op_kept_float_by_accuracy_control_is_named_as_the_cause(monkeypatch):
    model, calib = _chain()
    _fake_latency(monkeypatch, lambda m: 10 - len(_int8_convs(m)))
    _, result = apply(Quantize(calibration=calib, holdback=4, evaluate=lambda m: -len(_int8_convs(m)),
                               max_drop=0.0), model)
    assert not result.changed
    assert result.notes[-1].startswith("every quantizable op was kept float (accuracy control")


def test_a_speed_comparison_stops_once_its_ratio_is_known(monkeypatch):
    """Two fake models at a steady 1 ms and 0.9 ms on a fake clock: the ratio is known exactly after
    the first settle check (50 rounds), where the rounds cap would run 400."""
    import onnxopt.measure.timing as timing
    ticks = [0.0]
    calls = {"a": 0, "b": 0}

    def fake_runner(model, feed, threads):
        name = model  # the test passes names for models
        cost = {"a": 0.9e-3, "b": 1e-3}[name]

        def run():
            calls[name] += 1
            ticks[0] += cost
        return run
    monkeypatch.setattr(speed, "session_runner", fake_runner)
    monkeypatch.setattr(timing.time, "perf_counter", lambda: ticks[0])  # the time module both use
    assert speed.ratio("a", "b", {}, 1) == pytest.approx(0.9)
    assert calls == {"a": 1 + 2 + 50, "b": 1 + 2 + 50}  # the round that sets the budget, the warm-up, 50 timed


def test_an_arm_cpu_without_a_model_name_is_named_by_its_implementer_and_part():
    # ARM's /proc/cpuinfo has no "model name": two cores alike in flags must still read apart (timed_on)
    n1 = cpu.parse_cpuinfo(GRAVITON + "CPU part\t: 0xd0c\n", "arm64")
    v1 = cpu.parse_cpuinfo(GRAVITON + "CPU part\t: 0xd40\n", "arm64")
    assert n1.model == "implementer 0x41 part 0xd0c" and v1.model == "implementer 0x41 part 0xd40"
    assert n1.describe() != v1.describe() and n1.kind == v1.kind == "arm64"
    named = cpu.parse_cpuinfo("model name\t: Ampere Altra\n" + GRAVITON + "CPU part\t: 0xd0c\n", "arm64")
    assert named.model == "Ampere Altra"  # a model name still wins
