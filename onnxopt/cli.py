"""Command line: onnxopt run / bench / inspect / list-passes / demo.

Every error a user can cause ends in one line on stderr and a documented exit code (see
onnxopt.errors); outputs are written atomically, so a failed or interrupted run leaves no file.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .errors import BadData, OnnxoptError, StrictFailure, UsageError

if TYPE_CHECKING:  # the commands import what they use: `onnxopt --help` should not load onnx and onnxruntime
    from .measure.sidebyside import BenchReport, Subject
    from .pipeline.run import RunResult


def _shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from .runtime.sessions import parse_input_shape
    return dict(parse_input_shape(v) for v in values)


def _progress(enabled: bool):
    if not enabled:
        return lambda what, done, total: None

    def show(what: str, done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        click.echo(f"\r[{done}/{total}] {what:<40}", nl=False, err=True)
        if end:
            click.echo("", err=True)
    return show


def _bench_progress(enabled: bool, budget: float | None):
    """A bar on stderr. Timing stops at a round count or a time budget, whichever comes first, so
    the bar follows whichever is further along."""
    if not enabled:
        return None
    started: dict[str, float] = {}
    drawn = [0.0]

    def show(what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        start = started.setdefault(what, now)
        if now - drawn[0] < 0.1 and done < total:  # called between timed rounds: keep it cheap
            return
        drawn[0] = now
        fraction = done / total if total else 1.0
        if budget and what.startswith("timing"):
            fraction = max(fraction, min(1.0, (now - start) / budget))
        bar = "#" * int(fraction * 30)
        click.echo(f"\r[{bar:<30}] {what} {done}/{total} ", nl=False, err=True)
    return show


def _end_progress(enabled: bool) -> None:
    if enabled:
        click.echo("\r" + " " * 79 + "\r", nl=False, err=True)


class Duration(click.ParamType):
    """Seconds, or a number with s, m or h: how long a user would write it."""
    name = "duration"
    UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        number, unit = (text[:-1], text[-1]) if text and text[-1] in "smh" else (text, "")
        try:
            seconds = float(number) * self.UNITS[unit]
        except ValueError:
            self.fail(f"{value!r} is not a duration (90, 90s, 30m or 2h)", param, ctx)
        if not 0 < seconds < float("inf"):
            self.fail(f"{value!r}: a duration above zero", param, ctx)
        return seconds


def _time_left(left: float, one_done: bool) -> str:
    """What --max-time leaves, for the search's progress bar."""
    if left >= 3600:
        return f"{left / 3600:.1f} h left"
    if left >= 60:
        return f"{left / 60:.0f} min left"
    if left > 0:
        return f"{left:.0f} s left"
    return "time is up, the running trials finish" if one_done else "time is up, going on until a trial is done"


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D1,D2,..",
    help="Static shape for an input with dynamic dims (repeatable), e.g. input:1,3,224,224.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="onnxopt")
def cli() -> None:
    """onnxopt: make CNNs smaller and faster for deployment, with every rewrite verified."""


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--passes", "spec", metavar="SPEC", help="Comma list of passes with options, e.g. fold-bn,cleanup.")
@click.option("--config", type=click.Path(path_type=Path), help="Pipeline file (.yaml/.yml/.json) instead of --passes.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the result (default: MODEL with .opt.onnx).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the run report as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of tables.")
@input_shape_option
@click.option("--calib", type=click.Path(path_type=Path), metavar="DATA",
              help="Sample inputs for passes that calibrate: .npz/.npy, or a folder of them, or of images "
                   "(with --preprocess); `random` for seeded random inputs (smoke tests only: ranges from noise).")
@click.option("--preprocess", metavar="SPEC", help="How --calib images become inputs, e.g. resize=256,size=224,"
              "scale=255,mean=0.5|0.5|0.5 (keys: size resize layout order scale mean std; see onnxopt.data.images).")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path), metavar="DATA",
              help="Labelled data (.npz with `labels`) for accuracy budgets (quantize:max-drop=...).")
@click.option("--verify/--no-verify", default=None, help="Compare outputs after every pass (default on).")
@click.option("--rtol", type=float, default=None, help="Max relative output error an exact pass may cause [1e-4; at least 8 ulp of the output dtype].")
@click.option("--samples", type=click.IntRange(1, 64), default=None, help="Random samples for verification [2].")
@click.option("--seed", type=int, default=None, help="Seed for verification inputs [0].")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="onnxruntime intra-op threads of passes that time models [1] and of verification [every core, up to 8].")
@click.option("--overwrite", is_flag=True, help="Allow the output path to be the input model.")
@click.option("--strict", is_flag=True, help="Exit 4 and write nothing if any pass was rolled back or failed.")
@click.option("-v", "--verbose", is_flag=True, help="List every declined region.")
@click.option("--dry-run", is_flag=True, help="Write nothing; passes that can also explain their choices "
              "(prune: per-group sensitivity) add it to the report.")
@click.option("--bench", "bench", is_flag=True, help="Then time the input against the output side by side (see `onnxopt bench`).")
@click.option("--bench-data", type=click.Path(path_type=Path), metavar="DATA",
              help="Real inputs for --bench (.npz; with `labels`, top-1 accuracy of both models).")
def run(model: Path, spec: str | None, config: Path | None, output: Path | None, report_path: Path | None,
        as_json: bool, input_shapes: tuple[str, ...], calib: Path | None, preprocess: str | None, eval_data: Path | None,
        verify: bool | None, rtol: float | None, samples: int | None,
        seed: int | None, threads: int | None, overwrite: bool, strict: bool, verbose: bool, dry_run: bool,
        bench: bool, bench_data: Path | None) -> None:
    """Optimize MODEL with a pipeline of passes and write the result."""
    from .data.files import RANDOM, load_feeds, random_calibration
    from .graph import io as model_io
    from .pipeline.run import Pipeline
    from .pipeline.spec import load_config, parse_spec
    if bool(spec) == bool(config):
        raise UsageError("give exactly one of --passes SPEC or --config FILE")
    if dry_run and (bench or output is not None):
        raise UsageError("--dry-run writes nothing: drop -o/--bench (--report FILE keeps the JSON)")
    if bench_data is not None and not bench:
        raise UsageError("--bench-data is for --bench")
    passes, settings = load_config(config) if config else (parse_spec(spec), {})
    flags = {"verify": verify, "rtol": rtol, "samples": samples, "seed": seed, "threads": threads}
    settings.update({k: v for k, v in flags.items() if v is not None})
    shapes = {k: tuple(v) for k, v in settings.pop("input_shapes", {}).items()}
    shapes.update(_shapes(input_shapes))
    if not dry_run:
        output = output or model.with_name(model.name.removesuffix(".onnx") + ".opt.onnx")
        model_io.check_output_path(model, output, overwrite)
    if report_path is not None:
        model_io.check_output_path(model, report_path, False, what="report")
        if output is not None and model_io.same_file(report_path, output):
            raise UsageError(f"{report_path}: --report and -o name the same file")
    calib = calib or settings.pop("calib", None)  # a flag overrides the pipeline file's setting
    preprocess = preprocess or settings.pop("preprocess", None)
    settings.pop("calib", None)
    settings.pop("preprocess", None)
    if preprocess is not None and (calib is None or (str(calib) == RANDOM and not Path(calib).exists())):
        raise UsageError("--preprocess is for --calib DATA when DATA is a folder of images")
    source, data = model_io.load_model_and_bytes(model)
    if calib is not None:
        settings["calibration"] = (random_calibration(source, shapes) if str(calib) == RANDOM and not Path(calib).exists()
                                   else load_feeds(calib, source, preprocess=preprocess))
    if eval_data is not None:
        evaluation = load_feeds(eval_data, source)
        if evaluation.labels is None:
            raise BadData(f"{eval_data}: --eval needs `labels` (integer class indices) next to the inputs")
        settings["evaluation"] = evaluation
    if bench_data is not None:
        load_feeds(bench_data, source)  # a bad data file is reported before the pipeline runs, not after
    pipeline = Pipeline(passes, input_shapes=shapes, progress=_progress(sys.stderr.isatty() and not as_json),
                        dry_run=dry_run, **settings)
    result = pipeline.run(source, serialized=data)
    timed = None
    if bench and not (strict and result.report.problems):
        timed = _bench_before_after(_loaded(model, source, data), result, output, bench_data, shapes, settings.get("threads", 1), as_json)
    _finish(result, model, output, report_path, as_json, strict, verbose, timed, dry_run=dry_run)


def _loaded(path: Path, model, serialized: bytes | None) -> Subject:
    """The input model as a bench subject, from what load_model_and_bytes already read."""
    from .graph import io as model_io
    from .measure.sidebyside import Subject
    return Subject(path.name, model, serialized if serialized is not None else model_io.serialize(model, path), path)


def _bench_before_after(before: Subject, result: RunResult, output: Path | None, data: Path | None,
                        shapes: dict, threads: int, as_json: bool, budget: float = 10.0,
                        flag: str = "--bench") -> BenchReport | None:
    """The input model against the result, side by side. A failure here is a warning: the
    optimized model is still written."""
    from .graph import io as model_io
    from .measure.sidebyside import Settings, Subject, run_bench
    after = result.serialized if result.serialized is not None else model_io.serialize(result.model)
    subjects = [before, Subject(output.name if output else "optimized", result.model, after, output)]
    if subjects[0].name == subjects[1].name:
        subjects[1].name += " (optimized)"
    show = sys.stderr.isatty() and not as_json
    try:
        return run_bench(subjects, Settings(threads=threads, budget_seconds=budget), data=data,
                         input_shapes=shapes, progress=_bench_progress(show, budget))
    except OnnxoptError as exc:
        written = "the model is written" if output is not None else "the optimization stands"
        click.echo(f"warning: {flag}: {exc}; {written}, without the benchmark", err=True)
        return None
    finally:
        _end_progress(show)


def _finish(result: RunResult, model: Path, output: Path | None, report_path: Path | None, as_json: bool,
            strict: bool, verbose: bool, bench: BenchReport | None = None, *, dry_run: bool = False) -> None:
    from .graph import io as model_io
    from .pipeline.report import format_run
    from .text import human_bytes, to_json
    report = result.report
    data = report.as_dict()
    data.update({"input": str(model), "output": str(output) if output else None})
    if bench is not None:
        data["bench"] = bench.as_dict()
    if strict and report.problems:
        names = ", ".join(f"{p.name} ({p.status})" for p in report.problems)
        raise StrictFailure(f"--strict: {names}; nothing written")
    files = []  # model and report appear together or not at all
    if output is not None:
        files.append((output, result.serialized if result.serialized is not None
                      else model_io.serialize(result.model, output)))
    if report_path is not None:
        files.append((report_path, to_json(data).encode()))
    model_io.atomic_write_files(files)
    if as_json:
        click.echo(to_json(data), nl=False)
        return
    click.echo(format_run(report, verbose=verbose, tables=dry_run))
    if output is not None:
        click.echo(f"wrote {output} ({human_bytes(output.stat().st_size)})")
    elif dry_run:
        click.echo("dry run: no model written" + (f"; report in {report_path}" if report_path else ""))
    if bench is not None:
        from .measure.formats import format_table, headline

        click.echo(f"\n{headline(bench)}\n\n{format_table(bench)}")
    for p in report.problems:
        click.echo(f"warning: {p.name} was {p.status}: {p.message}", err=True)


def _batches(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--batch '{text}': expected positive integers separated by commas, e.g. 1,8,32")
    return values


def _optional_file(name: str, dest: str, what: str):
    """`--json` prints to stdout; `--json FILE` writes FILE."""
    return click.option(name, dest, is_flag=False, flag_value="-", default=None, metavar="[FILE]",
                        type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
                        help=f"{what} to stdout, or to FILE.")


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--rounds", type=click.IntRange(5, 100000), default=200, show_default=True,
              help="At most this many interleaved timed rounds per batch size ...")
@click.option("--budget", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="... or stop after this many seconds per batch size (at least 5 rounds).")
@click.option("--warmup", type=click.IntRange(0, 10000), default=5, show_default=True,
              help="Untimed rounds before the timed ones, for each set of sessions.")
@click.option("--session-sets", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Build the sessions this many times, each time in a new shuffled order, and pool the "
                   "rounds: where a session lands in memory moves its speed by a few percent.")
@click.option("--batch", "batch_text", metavar="N[,N..]",
              help="Batch sizes to time (needs a dynamic batch dim for sizes other than the model's).")
@click.option("--data", type=click.Path(path_type=Path), metavar="DATA",
              help="Real inputs (.npz/.npy or a folder); with a `labels` array, top-1 accuracy per model.")
@click.option("--samples", type=click.IntRange(1, 4096), default=8, show_default=True,
              help="Random samples for fidelity when no --data is given.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs.")
@input_shape_option
@click.option("--optimization", type=click.Choice(["disabled", "basic", "extended", "all"]), default="all",
              show_default=True, help="onnxruntime graph optimization level of the timed sessions.")
@click.option("--control", is_flag=True, help="Also time the first model against itself (an A/A control: "
              "how far apart two identical models measure on this machine).")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak session memory (one short child process per model).")
@_optional_file("--json", "json_out", "JSON report")
@_optional_file("--markdown", "markdown_out", "Markdown tables")
@_optional_file("--csv", "csv_out", "CSV, one row per model and batch size,")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), metavar="PNG",
              help="Latency vs accuracy/fidelity plot with the Pareto front (needs matplotlib).")
def bench(models: tuple[Path, ...], threads: int, rounds: int, budget: float, warmup: int, session_sets: int,
          batch_text: str | None,
          data: Path | None, samples: int, seed: int, input_shapes: tuple[str, ...], optimization: str, control: bool,
          memory: bool, json_out: Path | None, markdown_out: Path | None, csv_out: Path | None,
          plot: Path | None) -> None:
    """Time MODELS side by side (the first is the reference) and compare their outputs.

    One process; every model timed in the same rounds (each round a shuffled order, the next its
    reverse), on --session-sets sets of sessions built in shuffled orders, after warm-up. Reports
    median/p90/p99/min latency, ratios against the first model, size, params, MACs, peak session
    memory, fidelity against the first model and, with labelled --data, top-1 accuracy."""
    from .graph import io as model_io
    from .measure import formats as bench_report
    from .measure.sidebyside import Settings, Subject, run_bench, unique_names
    from .text import to_json

    outputs = {"json": json_out, "markdown": markdown_out, "csv": csv_out}
    to_stdout = [k for k, v in outputs.items() if v is not None and str(v) == "-"]
    if len(to_stdout) > 1:
        raise UsageError(f"only one of --{' / --'.join(to_stdout)} can print to stdout; give the others a FILE")
    files = {k: v for k, v in outputs.items() if v is not None and str(v) != "-"}
    if plot is not None:
        files["plot"] = plot  # a PNG always goes to a file
    if len(set(map(os.path.abspath, files.values()))) < len(files):
        raise UsageError("two outputs name the same file")
    for kind, f in files.items():
        for m in [*models, *([data] if data is not None else [])]:
            model_io.check_output_path(m, f, False, what="result")
        # `--json` takes an optional FILE, so `--json a.onnx b.onnx` would read a model as the FILE
        if f.suffix.lower() not in _RESULT_SUFFIXES[kind]:
            raise UsageError(f"{f}: --{kind} writes a {' or '.join(_RESULT_SUFFIXES[kind])} file; to print to "
                             "stdout, put the flag after the models")
    if plot is not None:
        bench_report.require_matplotlib()  # before minutes of timing, not after
    subjects = [Subject.from_path(p, name) for p, name in zip(models, unique_names(models))]
    if control:
        first = subjects[0]
        subjects.insert(1, Subject(f"{first.name} (A/A)", first.model, first.data, first.path))
    settings = Settings(threads=threads, optimization=optimization, warmup=warmup, rounds=rounds, budget_seconds=budget,
                        session_sets=session_sets, batches=_batches(batch_text), samples=samples, seed=seed,
                        memory=memory)
    show = sys.stderr.isatty()
    try:
        report = run_bench(subjects, settings, data=data, input_shapes=_shapes(input_shapes),
                           progress=_bench_progress(show, budget))
    finally:
        _end_progress(show)
    render = {"json": lambda: to_json(report.as_dict()).encode(),
              "markdown": lambda: bench_report.format_markdown(report).encode(),
              "csv": lambda: bench_report.format_csv(report).encode(),
              "plot": lambda: bench_report.plot_png(report)}
    model_io.atomic_write_files([(f, render[kind]()) for kind, f in files.items()])  # all or none
    if to_stdout:
        click.echo(render[to_stdout[0]]().decode(), nl=False)
    else:
        click.echo(bench_report.format_table(report))
        for f in files.values():
            click.echo(f"wrote {f}")


_RESULT_SUFFIXES = {"json": (".json",), "markdown": (".md", ".markdown"), "csv": (".csv",), "plot": (".png",)}


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@input_shape_option
@click.option("--fusion", is_flag=True, help="Also audit a quantized model: what onnxruntime runs in integer "
              "kernels and every op it leaves in float between DequantizeLinear and QuantizeLinear.")
@click.option("--target", default="auto", show_default=True, metavar="CPU",
              help="With --fusion: audit as onnxruntime runs the model on this kind of CPU, named as quantize:target "
                   "names them (x86-vnni, x86-avx512, x86-avx2, arm64); auto = this CPU.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(model: Path, input_shapes: tuple[str, ...], fusion: bool, target: str, as_json: bool) -> None:
    """Show opset, inputs/outputs, op histogram, params, MACs and weight bytes of MODEL."""
    from .graph import io as model_io
    from .pipeline.report import format_fusion, format_inspect, inspect_model
    from .runtime.cpu import cpu_summary
    from .text import to_json
    audited_as = _fusion_target(target, fusion)
    source, data = model_io.load_model_and_bytes(model)
    info = inspect_model(source, _shapes(input_shapes))
    info["file_bytes"] = model.stat().st_size
    info["cpu"] = cpu_summary()
    if fusion:
        from .analysis.fusion import audit

        info["fusion"] = audit(data if data is not None else model_io.serialize(source, model),
                               int8_fused=audited_as.int8_fused if audited_as else None).as_dict()
        if audited_as:
            # what the audit followed of that CPU (x86 leaves int8-activation QDQ units in float, ARM fuses them) and
            # whether its u8 x s8 products saturate, in place of this CPU's
            info["fusion"]["target"] = {"name": audited_as.name, "u8s8_saturates": audited_as.pair_bound}
    if as_json:
        click.echo(to_json(info), nl=False)
    else:
        click.echo(f"{model}\n{format_inspect(info)}")
        if fusion:
            click.echo(format_fusion(info["fusion"], info["cpu"]))


def _fusion_target(name: str, fusion: bool):
    """The quantize target `inspect --fusion --target` audits as, or None for this CPU."""
    if name == "auto":
        return None
    if not fusion:
        raise UsageError("--target goes with --fusion")
    from .passes.quantize.target import NAMES, TARGETS
    if name not in TARGETS:
        raise UsageError(f"--target: unknown CPU kind '{name}'; choose one of {', '.join(NAMES)}")
    return TARGETS[name]


@cli.command("list-passes")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_passes(as_json: bool) -> None:
    """Every registered pass with its options, defaults and a one-line description."""
    from .pipeline.options import describe
    from .pipeline.spec import available_passes
    from .text import table, to_json

    registry = available_passes()
    entries = []
    for name, cls in sorted(registry.items(), key=lambda kv: (kv[1].stage, kv[0])):
        entries.append({"name": name, "summary": cls.summary, "exact": cls.exact, "idempotent": cls.idempotent,
                        "needs_data": cls.needs_data, "options": describe(cls.Options)})
    if as_json:
        click.echo(to_json(entries), nl=False)
        return
    for e in entries:
        kind = "exact" if e["exact"] else "lossy"
        click.echo(f"{e['name']}  ({kind}{', needs data' if e['needs_data'] else ''})\n    {e['summary']}")
        rows = [[f"{o['name']}={o['default']}", o["type"], o["help"]] for o in e["options"]]
        if rows:
            click.echo(table(rows, indent="    ", align="lll"))
        click.echo("")


@cli.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="Run on this model instead of the bundled one.")
@click.option("--data", type=click.Path(path_type=Path), metavar="DATA",
              help="Labelled inputs for the before/after accuracy (default for the bundled model: its "
                   "held-out digits test split; for --model: random inputs, fidelity only).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the result.")
@click.option("--budget", type=click.FloatRange(0, min_open=True), default=3.0, show_default=True,
              help="Seconds of interleaved timing, before vs after.")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
@click.option("-v", "--verbose", is_flag=True, help="List every declined region.")
def demo(model_path: Path | None, data: Path | None, output: Path | None, budget: float,
         input_shapes: tuple[str, ...], as_json: bool, verbose: bool) -> None:
    """Run every pass that needs no data on a bundled model and show before/after: the graph,
    the accuracy on held-out data and the latency, measured side by side.

    The bundled model is a RepVGG-style CNN in its train-time form (three branches and BNs per
    block), trained on scikit-learn's handwritten digits (see models/train_digits.py)."""
    from .data.files import load_feeds
    from .graph import io as model_io
    from .models import DEMO_DATA, DEMO_MODEL, FIXTURES, fixture_path
    from .pipeline.run import Pipeline
    from .pipeline.spec import available_passes

    path = model_path or fixture_path(DEMO_MODEL)
    if data is None and model_path is None:
        data = FIXTURES / DEMO_DATA
    passes = [cls() for cls in sorted(available_passes().values(), key=lambda c: (c.stage, c.name))
              if not cls.needs_data and cls.exact]
    if output is not None:
        model_io.check_output_path(path, output, False)
    source, serialized = model_io.load_model_and_bytes(path)
    if data is not None:
        load_feeds(data, source)  # a bad data file is reported before the pipeline runs
    shapes = _shapes(input_shapes)
    if not as_json:
        click.echo(f"model: {path.name}; pipeline: {','.join(p.spec for p in passes)}\n")
    result = Pipeline(passes, input_shapes=shapes, progress=_progress(sys.stderr.isatty() and not as_json)).run(
        source, serialized=serialized)
    timed = _bench_before_after(_loaded(path, source, serialized), result, output, data, shapes, 1, as_json, budget, flag="the benchmark")
    _finish(result, path, output, None, as_json, False, verbose, timed)


# click >= 8.2 signals "no arguments: show help" with an exception of its own
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())



@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", type=click.Path(path_type=Path), metavar="DATA", required=True,
              help="Sample inputs (.npz/.npy or a folder): passes calibrate on them and, without --eval, the "
                   "metric is agreement with the original on the last fifth of them (top-1 agreement for a "
                   "classifier's [N, classes] output, else the output cosine less the part common to every input).")
@click.option("--preprocess", metavar="SPEC", help="How --calib images become inputs, as for `onnxopt run` "
              "(e.g. resize=256,size=224,scale=255,mean=0.5|0.5|0.5; see onnxopt.data.images).")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path), metavar="LABELLED",
              help="Labelled data (.npz with `labels`): the metric is top-1 accuracy on it.")
@click.option("--max-drop", type=float, default=0.01, show_default=True,
              help="Accuracy budget: the chosen model's metric may fall this much (0.01 = one point).")
@click.option("--trials", type=click.IntRange(1, 10000), default=32, show_default=True, help="Trials in all.")
@click.option("--workers", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Trials at a time (a local Ray instance with this many CPUs).")
@click.option("--ray", "ray_address", metavar="ADDRESS", help="Run on an existing Ray cluster (host:port) instead.")
@click.option("--storage", metavar="URL", help="Optuna storage of the study [sqlite:///onnxopt-search.db]; a "
              "database URL shares it between machines of one kind (CPU, onnxruntime).")
@click.option("--resume", is_flag=True, help="Continue the study in --storage, or join a search running on it: "
              "finished trials are not redone, another search's running ones are left to it.")
@click.option("--space", type=click.Path(path_type=Path), help="Search space file (.yaml/.json) narrowing or widening "
              "the default (see onnxopt.search.space).")
@click.option("--timing-budget", type=click.FloatRange(0.2, 600), default=2.0, show_default=True,
              help="Seconds of interleaved timing per trial.")
@click.option("--max-time", type=Duration(), metavar="DURATION",
              help="Ask no trial once this long has passed (90, 90s, 30m, 2h): those running finish, the choice "
              "is made from the trials done (at least one), and --resume continues the study later.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler and of the passes.")
@input_shape_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the chosen model here.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every trial, the front and the choice as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), metavar="PNG",
              help="Latency vs metric drop with the Pareto front (needs matplotlib).")
def search(model: Path, calib: Path, preprocess: str | None, eval_data: Path | None, max_drop: float, trials: int, workers: int,
           ray_address: str | None, storage: str | None, resume: bool, space: Path | None, timing_budget: float,
           max_time: float | None, seed: int, input_shapes: tuple[str, ...], output: Path | None,
           report_path: Path | None, plot: Path | None) -> None:
    """Find the fastest model within an accuracy budget: a Pareto front of pipeline specs.

    Each trial is a spec that `onnxopt run --passes SPEC` reproduces (exact passes first, then prune
    and int8 choices), measured for the metric and for latency against MODEL side by side on the
    machine that built it. Optuna samples the specs and keeps the study; Ray runs the trials."""
    from .data.files import load_feeds
    from .errors import NoCandidate
    from .graph import io as model_io
    from .search.formats import format_front, plot_front
    from .search.run import search as run_search
    from .text import to_json
    for path, what in ((output, "output"), (report_path, "report"), (plot, "plot")):
        if path is not None:
            model_io.check_output_path(model, path, False, what=what)
    source = model_io.load_model(model)
    calibration = load_feeds(calib, source, preprocess=preprocess)
    evaluation = load_feeds(eval_data, source) if eval_data is not None else None
    show = sys.stderr.isatty()
    started = time.monotonic()  # about when search() starts its own --max-time clock

    def progress(state: dict) -> None:
        if not show:
            return
        best = state["best"]
        tail = (f"fastest within budget x{best['latency_ratio']:.3f} (drop {best['drop'] * 100:.2f})"
                if best else "none within budget yet")
        if max_time is not None and not state.get("racing"):
            tail += "; " + _time_left(max_time - (time.monotonic() - started), state["done"] > state["failed"])
        if state.get("racing"):
            tail = f"timing the {state['racing']} fastest within budget again, side by side"
        bar = "#" * int(30 * state["done"] / max(1, state["total"]))
        click.echo(f"\r[{bar:<30}] {state['done']}/{state['total']} trials, {state['failed']} failed; {tail} ",
                   nl=False, err=True)
    result = run_search(source, calibration, evaluation=evaluation, max_drop=max_drop, trials=trials, workers=workers,
                        ray_address=ray_address, storage=storage, space=str(space) if space else None, resume=resume,
                        seed=seed, input_shapes=_shapes(input_shapes), timing_budget=timing_budget, progress=progress,
                        max_time=max_time)
    _end_progress(show)
    if preprocess is not None:  # the reproduce line calibrates on the same images, read the same way
        result.report["calibration_preprocess"] = preprocess
    click.echo(format_front(result))
    if report_path is not None:
        model_io.atomic_write_bytes(report_path, to_json(result.report).encode())
    if plot is not None:
        plot_front(result, plot)
    if result.best is None:
        c = result.closest
        closest = (f"; closest: {c.spec} (drop {c.drop * 100:.2f} points, latency x{c.latency_ratio:.3f})" if c
                   else "; no trial finished")
        raise NoCandidate(f"no trial within --max-drop {max_drop:g}{closest}")
    if output is not None:
        model_io.save_model(result.best, output)
        click.echo(f"wrote {output}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors and documented exit codes instead of tracebacks."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # make_context/invoke rather than cli.main: click's main prints a stray blank line on
        # Ctrl-C, and we want every error as exactly one line.
        with cli.make_context("onnxopt", args) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `onnxopt bench ... | head`: the reader left; that is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail again
        sys.exit(0)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("onnxopt: interrupted; no output written", err=True)
        sys.exit(130)
    except _NO_ARGS_IS_HELP as exc:  # bare `onnxopt`: help, not an error
        click.echo(exc.ctx.get_help() if exc.ctx else "")
        sys.exit(0)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        command = f" {ctx.command_path.split(' ', 1)[1]}" if ctx and " " in ctx.command_path else ""
        click.echo(f"onnxopt: error: {exc.format_message()} (see `onnxopt{command} --help`)", err=True)
        sys.exit(2)
    except OnnxoptError as exc:
        click.echo(f"onnxopt: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - last resort: a bug, reported in one line
        if os.environ.get("ONNXOPT_DEBUG"):
            raise
        click.echo(f"onnxopt: internal error: {type(exc).__name__}: {exc} (set ONNXOPT_DEBUG=1 for the traceback)",
                   err=True)
        sys.exit(1)
    sys.exit(0)
