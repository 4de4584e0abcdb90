"""Human-readable tables for run reports, model inspection and the pass list (JSON comes from the
reports' as_dict())."""
from __future__ import annotations

from collections.abc import Sequence

import onnx

from ..analysis.cost import ModelStats, model_stats
from ..errors import DynamicShape
from ..runtime.fidelity import Fidelity
from ..runtime.sessions import input_specs, resolve_input_shapes
from ..text import human, human_bytes, table
from .run import RunReport

MAX_TABLE_ROWS = 25
MAX_SKIPS_SHOWN = 8


def fidelity_line(fid: Fidelity | None) -> str:
    if fid is None:
        return "not measured"
    top1 = f", top-1 agreement {fid.top1_agreement:.1%}" if fid.top1_agreement is not None else ""
    # centred: the cosine of what the input decides, which a plain cosine hides where most of an output
    # is common to every input (runtime.fidelity.centred_cosine)
    centred = f" (centred {fid.centred_cosine:.6f})" if fid.centred_cosine is not None else ""
    return (f"max abs {fid.max_abs:.3g}, max rel {fid.max_rel:.3g}, cosine {fid.cosine:.6f}{centred}{top1} "
            f"({fid.samples} samples)")


def compare_stats(before: ModelStats, after: ModelStats, ops: Sequence[str] | None = None) -> str:
    # most frequent first; ties by name (set order follows string hashing, which changes per process)
    ops = ops or sorted(set(before.ops) | set(after.ops),
                        key=lambda o: (-max(before.ops.get(o, 0), after.ops.get(o, 0)), o))
    rows = [["nodes", before.nodes, after.nodes, _delta(before.nodes, after.nodes)]]
    rows += [[f"  {op}", before.ops.get(op, 0), after.ops.get(op, 0),
              _delta(before.ops.get(op, 0), after.ops.get(op, 0))] for op in ops]
    rows += [["params", human(before.params), human(after.params), _pct(before.params, after.params)],
             ["MACs", human(before.macs), human(after.macs), _pct(before.macs, after.macs)],
             ["weights", human_bytes(before.weight_bytes), human_bytes(after.weight_bytes),
              _pct(before.weight_bytes, after.weight_bytes)]]
    return table(rows, ["", "before", "after", "change"])


def _delta(a: int, b: int) -> str:
    return "" if a == b else f"{b - a:+d}"


def _pct(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == b or not a:
        return ""
    return f"{(b - a) / a:+.1%}"


def format_run(report: RunReport, *, verbose: bool = False, tables: bool = False) -> str:
    """The run as text; a pass's detail tables (prune's groups and sensitivity) with verbose or
    tables."""
    out = []
    rows = []
    for p in report.passes:
        did = " ".join(f"{k}={v:g}" for k, v in p.stats.items() if v) or "-"
        rows.append([p.spec, p.status, f"{p.seconds:.2f}s", did])
    out.append(table(rows, ["pass", "status", "time", "what it did"], align="llrl"))
    for p in report.passes:
        if p.message:
            out.append(f"  {p.name} {p.status}: {p.message}")
        for note in p.notes:
            out.append(f"  {p.name}: {note}")
    for p in report.passes if verbose or tables else ():
        for t in p.details.get("tables", ()):
            rows = t["rows"] if verbose else t["rows"][:MAX_TABLE_ROWS]
            out.append(f"\n{p.name}: {t['title']}")
            out.append(table(rows, t["headers"], indent="  "))
            if len(rows) < len(t["rows"]):
                out.append(f"  ... and {len(t['rows']) - len(rows)} more rows (-v lists all)")
    open_skips = [(p.name, s) for p in report.passes for s in p.skipped if not s.settled_by]
    settled = [(p.name, s) for p in report.passes for s in p.skipped if s.settled_by]
    if open_skips:
        out.append(f"\ndeclined ({len(open_skips)}):")
        shown = open_skips if verbose else open_skips[:MAX_SKIPS_SHOWN]
        out.extend(f"  {name}: {s.where}: {s.reason}" for name, s in shown)
        if len(shown) < len(open_skips):
            out.append(f"  ... and {len(open_skips) - len(shown)} more (--verbose or --report FILE lists all)")
    if settled:
        if verbose:
            out.append(f"\ndeclined, then handled by a later pass ({len(settled)}):")
            out.extend(f"  {name}: {s.where}: {s.reason} [then: {s.settled_by}]" for name, s in settled)
        else:
            by = ", ".join(sorted({s.settled_by for _, s in settled}))
            out.append(f"\n{len(settled)} region(s) declined by one pass were then handled by {by} (-v lists them)")
    out.append("")
    out.append(compare_stats(report.before, report.after))
    out.append("")
    if report.verified:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v)) or 'scalar'}" for k, v in report.input_shapes.items())
        cpu = cpu_line(report.cpu)
        if report.deployed:
            out.append(f"fidelity vs original, as deployed (onnxruntime ORT_ENABLE_ALL on this CPU, {cpu}): "
                       f"{fidelity_line(report.fidelity)}")
            out.append(f"  in reference kernels (optimizations off): {fidelity_line(report.reference_fidelity)}")
            out.append(f"verified in onnxruntime on {report.verified_on}: {shapes}; exact passes with "
                       "optimizations off, lossy ones as deployed")
        else:
            out.append(f"fidelity vs original: {fidelity_line(report.fidelity) if report.changed else 'unchanged model'}")
            out.append(f"verified in onnxruntime (optimizations off) on {report.verified_on}: {shapes}; CPU {cpu}")
        held = [p for p in report.passes if p.exact and p.tolerance is not None]
        v = report.verification
        if held:
            how = ("--rtol" if v.get("rtol_given") else
                   f"{v.get('floor_multiple', 4):g}x the model's noise floor where a pass needed more than "
                   f"{v.get('rtol', 1e-4):g}: what onnxruntime's basic optimizations alone move its outputs by")
            out.append("exact passes held to max rel error: "
                       + ", ".join(f"{p.name} {p.tolerance:.2g}" + (f" (floor {p.noise_floor:.2g})" if p.noise_floor else "")
                                   for p in held) + f" ({how})")
            if v.get("floors_capped"):
                out.append(f"  noise floor {max(v['floors_capped']):.2g} is above {v['floor_ceiling']:g}: such outputs cannot "
                           "show exactness; rtol was kept")
    else:
        out.append("verification off (--no-verify): outputs were not compared")
    return "\n".join(out)


def inspect_model(model: onnx.ModelProto, input_shapes: dict | None = None) -> dict:
    note = None
    try:
        shapes = resolve_input_shapes(model, input_shapes)
    except DynamicShape as exc:
        shapes, note = {}, f"MACs need static shapes: {exc}"
    stats = model_stats(model, shapes)
    opset = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    outputs = []
    for o in model.graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in o.type.tensor_type.shape.dim]
        outputs.append({"name": o.name, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type)),
                        "shape": dims})
    return {
        "schema": "onnxopt.inspect/1",
        "ir_version": model.ir_version,
        "opset": opset,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [{"name": s.name, "dtype": str(s.dtype), "shape": None if s.shape is None else [d if d is not None else "?" for d in s.shape]}
                   for s in input_specs(model)],
        "outputs": outputs,
        "stats": stats.as_dict(),
        "static_input_shapes": {k: list(v) for k, v in shapes.items()},
        "note": note,
    }


def format_inspect(info: dict) -> str:
    st = info["stats"]
    lines = [
        f"ir_version {info['ir_version']}, opsets {', '.join(f'{k} {v}' for k, v in info['opset'].items())}"
        + (f", producer {info['producer']}" if info["producer"] else ""),
        "inputs:",
        *[f"  {i['name']}: {i['dtype']} {i['shape'] if i['shape'] is not None else '(no shape declared)'}"
          for i in info["inputs"]],
        "outputs:",
        *[f"  {o['name']}: {o['dtype']} {o['shape']}" for o in info["outputs"]],
        f"nodes {st['nodes']}, params {human(st['params'])}, MACs {human(st['macs'])}"
        f" (batch {next(iter(info['static_input_shapes'].values()), ['?'])[0]}), weights {human_bytes(st['weight_bytes'])}",
        "ops:",
        table(sorted(st["ops"].items(), key=lambda kv: (-kv[1], kv[0])), indent="  "),
    ]
    if info["note"]:
        lines.append(f"note: {info['note']}")
    if info.get("cpu"):
        lines.append(f"this CPU: {cpu_line(info['cpu'])}")
    return "\n".join(lines)


def cpu_line(cpu: dict) -> str:
    """`AMD EPYC (x86-avx2: avx2; u8 x s8 products saturate in int16)`, from onnxopt.runtime.cpu.cpu_summary()."""
    flags = ", ".join(cpu.get("flags", ())) or "no int8 extensions"
    sat = cpu.get("u8s8_saturates")
    how = "" if sat is None else ("; u8 x s8 products saturate in int16" if sat else "; exact int8 products")
    return f"{cpu.get('model', '?')} ({cpu.get('kind', '?')}: {flags}{how})"


def format_fusion(fusion: dict, cpu: dict | None = None) -> str:
    """The fusion audit of `inspect --fusion`: integer kernels, then every float island."""
    ints = fusion["integer_ops"]
    islands = fusion["float_islands"]
    target = fusion.get("target")
    lines = [f"fusion (onnxruntime's optimized graph{', as on ' + target['name'] if target else ''}):"]
    if not ints and not fusion["dequantize_linear"]:
        lines.append("  not a quantized model: no integer kernels, no DequantizeLinear")
        return "\n".join(lines)
    lines.append(f"  integer kernels: {', '.join(f'{n} {op}' for op, n in ints.items()) or 'none'}")
    lines.append(f"  QuantizeLinear {fusion['quantize_linear']}, DequantizeLinear {fusion['dequantize_linear']} left")
    lines.append(f"  float islands: {len(islands)}" + (" (every quantized op runs in an integer kernel)" if not islands else ""))
    lines += [f"    {i['op']} {i['name']!r}: {i['inputs_from']}" for i in islands]
    tail = fusion.get("float_tail") or []
    if tail:
        lines.append("  float after the last DequantizeLinear (reaches only graph outputs): "
                     + ", ".join(f"{i['op']} {i['name']!r}" for i in tail))
    hot = fusion.get("saturating") or []
    if hot:
        shown = ", ".join(hot[:5]) + (f" and {len(hot) - 5} more" if len(hot) > 5 else "")
        # the CPU `inspect --fusion --target` audited as, else this one (whose probe may not have answered)
        who, sat = ((target["name"], target["u8s8_saturates"]) if target else
                    (f"this CPU ({cpu['kind']})", cpu.get("u8s8_saturates")) if cpu else (None, None))
        here = f"; {who} {'saturates' if sat else 'does not' if sat is False else 'may'}" if who else ""
        lines.append(f"  weight pairs beyond int16 in {len(hot)} integer kernel(s) ({shown}): u8 x s8 products saturate "
                     f"on x86 without VNNI{here} (quantize:target=x86-avx2 bounds them)")
    elif ints:
        lines.append("  no weight pair beyond int16: safe on x86 without VNNI too")
    return "\n".join(lines)
