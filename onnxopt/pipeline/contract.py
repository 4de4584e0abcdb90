"""The pass contract: what a pass is given (PassContext), what it returns (PassResult, Skip), and
the Pass base class every built-in and third-party pass derives from."""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import onnx

from ..graph.core import Graph, Node
from ..runtime.sessions import Feed
from . import options as _options

if TYPE_CHECKING:
    from .run import PassReport


@dataclasses.dataclass(frozen=True)
class Skip:
    """A region a pass left alone: where (a node or tensor, as the user sees it) and why (one line).
    `settled_by` names a later pass of the same run that removed the node anyway (fold-bn declines
    an identity BN, reparam then merges it): the decline no longer describes the result."""

    where: str
    reason: str
    node: str = dataclasses.field(default="", compare=False, repr=False)  # the node's name, if it has one
    settled_by: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def as_dict(self) -> dict:
        return {"where": self.where, "reason": self.reason, "settled_by": self.settled_by}


@dataclasses.dataclass
class PassResult:
    changed: bool = False
    stats: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    # structured findings for the JSON report; a "tables" entry (title, headers, rows) is also shown
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def count(self, key: str, n: float = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def skip(self, where: Node | str, reason: str) -> None:
        if isinstance(where, Node):
            self.skipped.append(Skip(where.label, reason, where.name))
        else:
            self.skipped.append(Skip(str(where), reason))


class Progress(Protocol):
    def __call__(self, what: str, done: int, total: int) -> None: ...


def _no_progress(what: str, done: int, total: int) -> None:
    pass


@dataclasses.dataclass
class PassContext:
    """What a pass may read besides the graph. `calibration` is any re-iterable of feed dicts
    (prune and quantize iterate it several times); `input_shapes` are static shapes resolved by the
    pipeline (batch 1 unless the user gave --input-shape)."""

    seed: int = 0
    input_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    calibration: Iterable[Feed] | None = None
    evaluation: Any = None  # labelled data (a FeedSet with labels) for passes that keep an accuracy budget
    progress: Progress = _no_progress
    threads: int = 1
    dry_run: bool = False  # passes that can explain what they would do add it to details
    # per-region rollback: the regions an exact pass may rewrite on this run (None: all), and those it
    # asked for; see region()
    allowed: frozenset[str] | None = None
    regions: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)  # region key -> where, for the report

    def region(self, key: str, where: str | None = None) -> bool:
        """Asked by a pass before each independent rewrite (a BN folded, a block merged), with a key
        naming it as the input graph does (an output tensor: stable when other rewrites are held
        back) and where to say it is (a node label). False: leave this one as it is. After a
        failed verification the pipeline runs the pass again on subsets of the keys it asked for, to
        keep the rewrites that verify and decline only the ones that do not."""
        self.regions.append(key)
        if where:
            self.labels[key] = where
        return self.allowed is None or key in self.allowed


class Pass(abc.ABC):
    """Subclass, set the class attributes, define `Options` if the pass takes any, implement run()."""

    name: ClassVar[str]              # CLI spelling, kebab-case: "fold-bn"
    summary: ClassVar[str] = ""      # one line for list-passes
    exact: ClassVar[bool] = True     # exact passes are verified and rolled back on mismatch
    idempotent: ClassVar[bool] = True
    needs_data: ClassVar[bool] = False  # True: needs ctx.calibration (excluded from `onnxopt demo`)
    needs_static_shapes: ClassVar[bool] = False  # True: input shapes are resolved even without verify
    stage: ClassVar[int] = 50        # position in the demo pipeline (lower runs first)

    @dataclasses.dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, options: Any = None, /, **overrides: Any) -> None:
        base = options if options is not None else self.Options()
        self.options = _options.build_options(self.name, type(base), overrides, base) if overrides else base

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "Pass":
        """Build from untyped values (CLI strings, YAML/JSON)."""
        return cls(_options.build_options(cls.name, cls.Options, values))

    def needs_calibration(self) -> bool:
        """Whether this configured pass needs ctx.calibration (the class's needs_data, or an option
        that asks for data, like prune's criterion=data). Checked before any pass runs."""
        return self.needs_data

    def requires(self, graph: Graph, ctx: PassContext) -> None:
        """Raise PreconditionError (one line) when the pass cannot run on this model at all."""

    @abc.abstractmethod
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Edit `graph` in place through the graph layer; count what you did."""

    @property
    def spec(self) -> str:
        """The pass as a pipeline string: name plus the options that differ from the defaults."""
        default = _options.to_dict(self.Options())
        diff = {k: v for k, v in _options.to_dict(self.options).items() if default.get(k) != v}
        if not diff:
            return self.name
        text = ",".join(f"{k}={'|'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in diff.items())
        return f"{self.name}:{text}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


class Instrument(Protocol):
    """Hooks around each pass (TVM's PassInstrument, reduced): timing, dumps, custom checks."""

    def before_pass(self, p: Pass, model: onnx.ModelProto) -> None: ...
    def after_pass(self, p: Pass, model: onnx.ModelProto, report: PassReport) -> None: ...
