"""What `onnxopt search` chooses from, and how a choice becomes a pipeline spec string.

A trial is always one spec that `onnxopt run --passes SPEC` reproduces: the exact passes that
apply to the model first (fold-bn, reparam, cleanup: they never cost accuracy), then structured
pruning (off, a ratio, or a latency target; optionally leaving the most sensitive groups of the
dry-run scan whole, and spreading a ratio over the groups by that scan: less on the sensitive ones,
more on the robust ones), then int8 (off or on; the range method; an accuracy budget that
returns the most sensitive ops to float; the CPU format is quantize's own per-CPU choice). A space
file (YAML or JSON) narrows or widens any of it:

    exact: [fold-bn, reparam, cleanup]
    prune: {modes: [off, ratio, target-latency], ratio: [0.1, 0.7], target-latency: [0.4, 0.95],
            protect: [0, 0.25, 0.5], spread: [0, 0.5, 1], criteria: [data, recon]}
    quantize: {modes: [off, on], methods: [minmax, percentile], max-drop: [none, 0.005, 0.02],
               speed: [false]}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..errors import BadInput, BadOption, first_line

EXACT = ("fold-bn", "reparam", "cleanup")
PRUNE_MODES = ("off", "ratio", "target-latency")
CRITERIA = ("l1", "l2", "data", "recon")
QUANTIZE_MODES = ("off", "on")
METHODS = ("minmax", "mean-minmax", "percentile", "entropy", "mse")
LADDER = (0.5, 0.65, 0.8)  # latency targets tried after the recipes (see Space.ladder)
BISECT_STEPS = 2           # targets halfway between rungs, once the ladder is measured (see Space.bisect)
BISECT_GAP = 0.04          # rungs this close need no target between them
# the README's fixed recipes: tried first, so the search starts from what a user would do by hand
RECIPES = (
    {"prune": "off", "quantize": "off"},
    {"prune": "ratio", "prune.ratio": 0.3, "prune.protect": 0.0, "prune.spread": 0.0, "quantize": "off"},
    {"prune": "off", "quantize": "on", "quantize.method": "minmax", "quantize.max-drop": "none"},
    {"prune": "ratio", "prune.ratio": 0.3, "prune.protect": 0.0, "prune.spread": 0.0, "quantize": "on",
     "quantize.method": "minmax", "quantize.max-drop": "none"},
)


@dataclasses.dataclass(frozen=True)
class Space:
    exact: tuple[str, ...] = EXACT
    prune_modes: tuple[str, ...] = PRUNE_MODES
    ratio: tuple[float, float] = (0.1, 0.7)  # up to prune's own max-ratio
    target_latency: tuple[float, float] = (0.4, 0.95)
    protect: tuple[float, ...] = (0.0, 0.25, 0.5)
    # how far a ratio is spread over the groups by sensitivity rank: 0 = uniform, 1 = from nothing on
    # the most sensitive group to twice the ratio on the most robust (see spread_ratios)
    spread: tuple[float, ...] = (0.0, 0.5, 1.0)
    # which channels go: `recon` (the next layers' least-squares loss, see prune's reconstruction
    # module) lost 0.5-1.6 points where `data` lost 1.6-3.1 on the digits MobileNets at ratio 0.3,
    # but `data` spread by the scan did better on the digits ResNet: the sampler chooses. `recon`
    # costs more time per build (~3x on ResNet-50), so `criteria: [data]` is the faster search
    criteria: tuple[str, ...] = ("data", "recon")
    quantize_modes: tuple[str, ...] = QUANTIZE_MODES
    methods: tuple[str, ...] = ("minmax", "percentile")
    max_drop: tuple[str, ...] = ("none", "0.005", "0.02")
    # quantize's own speed check (int8 only in regions faster than float) times models while it
    # builds, and each of its timings stops the other trials on the node: off by default, the search
    # measures the whole model anyway; `speed: [false, true]` in a space file lets it try both
    quantize_speed: tuple[bool, ...] = (False,)

    def __post_init__(self) -> None:
        for name, got, known in (("prune modes", self.prune_modes, PRUNE_MODES),
                                 ("prune criteria", self.criteria, CRITERIA),
                                 ("quantize modes", self.quantize_modes, QUANTIZE_MODES),
                                 ("quantize methods", self.methods, METHODS)):
            bad = [g for g in got if g not in known]
            if bad or not got:
                raise BadOption(f"search space: {name} {list(got)}: choose from {', '.join(known)}")
        for name, (low, high) in (("prune ratio", self.ratio), ("target-latency", self.target_latency)):
            if not 0 < low <= high < 1:
                raise BadOption(f"search space: {name} [{low}, {high}] must lie in (0, 1)")
        if any(not 0 <= p < 1 for p in self.protect):
            raise BadOption(f"search space: protect {list(self.protect)}: shares in [0, 1)")
        if not self.spread or any(not 0 <= p <= 1 for p in self.spread):
            raise BadOption(f"search space: spread {list(self.spread)}: values in [0, 1]")
        if not self.quantize_speed or any(not isinstance(v, bool) for v in self.quantize_speed):
            raise BadOption(f"search space: quantize speed {list(self.quantize_speed)}: true and/or false")
        for d in self.max_drop:
            if d != "none" and not 0 < float(d) < 1:
                raise BadOption(f"search space: quantize max-drop {d}: 'none' or a share in (0, 1)")

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    @property
    def uses_ranking(self) -> bool:
        """Whether any choice of this space needs the sensitivity ranking (see uses_ranking())."""
        return any(m != "off" for m in self.prune_modes) and (
            any(p > 0 for p in self.protect) or ("ratio" in self.prune_modes and any(s > 0 for s in self.spread)))

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The trial's choices (Optuna's define-by-run API: the same names and ranges every time, so a
        resumed study keeps its history)."""
        params: dict[str, Any] = {"prune": trial.suggest_categorical("prune", list(self.prune_modes))}
        if params["prune"] == "ratio":
            params["prune.ratio"] = round(trial.suggest_float("prune.ratio", *self.ratio), 3)
        elif params["prune"] == "target-latency":
            params["prune.target-latency"] = round(trial.suggest_float("prune.target-latency", *self.target_latency), 3)
        if params["prune"] != "off":
            params["prune.protect"] = trial.suggest_categorical("prune.protect", list(self.protect))
            if not trial.user_attrs.get("recipe"):  # a recipe prunes as a user's plain `prune` does
                params["prune.criterion"] = (trial.suggest_categorical("prune.criterion", list(self.criteria))
                                             if len(self.criteria) > 1 else self.criteria[0])
        if params["prune"] == "ratio":
            params["prune.spread"] = trial.suggest_categorical("prune.spread", list(self.spread))
        params["quantize"] = trial.suggest_categorical("quantize", list(self.quantize_modes))
        if params["quantize"] == "on":
            params["quantize.method"] = trial.suggest_categorical("quantize.method", list(self.methods))
            params["quantize.max-drop"] = trial.suggest_categorical("quantize.max-drop", list(self.max_drop))
            if trial.user_attrs.get("recipe"):  # the README's recipe as a user runs it: speed check on
                params["quantize.speed"] = True
            else:
                params["quantize.speed"] = (trial.suggest_categorical("quantize.speed", list(self.quantize_speed))
                                            if len(self.quantize_speed) > 1 else self.quantize_speed[0])
        return params

    def ladder(self) -> list[dict[str, Any]]:
        """Trials after the recipes: prune to a few latency targets, nothing else, so the sampler
        starts with points spread along the latency axis (where the budget is met and where it
        breaks) rather than from a handful of random corners of a space this wide."""
        if "target-latency" not in self.prune_modes:
            return []
        low, high = self.target_latency
        out = []
        for target in LADDER:
            if low <= target <= high:
                params: dict[str, Any] = {"prune": "target-latency", "prune.target-latency": target,
                                          "prune.protect": self.protect[0] if 0.0 not in self.protect else 0.0,
                                          "prune.criterion": "recon" if "recon" in self.criteria else self.criteria[0]}
                if "off" in self.quantize_modes:
                    params["quantize"] = "off"
                out.append(params)
        return out

    def bisect(self, rungs: dict[float, bool | None]) -> dict[str, Any] | None:
        """The next rung once the ladder's are measured (`rungs`: target -> within the budget, None
        for a rung that failed): halfway between the fastest target within the budget and the slowest
        faster one that was not (the space's bounds where there is none), as the same ladder trial
        otherwise, and never a target tried before. BISECT_STEPS of them place the fastest model the
        budget allows to a few hundredths of latency, which the sampler, modelling a space this wide
        from a few dozen trials, seldom does."""
        ladder = self.ladder()
        if not ladder or not rungs:
            return None
        low, high = self.target_latency
        within = min((t for t, ok in rungs.items() if ok), default=high)
        over = max((t for t, ok in rungs.items() if ok is False and t < within), default=low)
        target = round((within + over) / 2, 3)
        if within - over <= BISECT_GAP or target in rungs:
            return None
        return {**ladder[0], "prune.target-latency": target}

    def recipes(self) -> list[dict[str, Any]]:
        """The fixed recipes this space can express."""
        out = []
        for r in RECIPES:
            if r["prune"] not in self.prune_modes or r["quantize"] not in self.quantize_modes:
                continue
            if r.get("quantize.method", self.methods[0]) not in self.methods:
                r = {**r, "quantize.method": self.methods[0]}
            if "quantize.max-drop" in r and r["quantize.max-drop"] not in self.max_drop:
                r = {**r, "quantize.max-drop": self.max_drop[0]}
            if "prune.ratio" in r and not self.ratio[0] <= r["prune.ratio"] <= self.ratio[1]:
                continue
            if "prune.protect" in r and r["prune.protect"] not in self.protect:
                r = {**r, "prune.protect": self.protect[0]}
            if "prune.spread" in r and r["prune.spread"] not in self.spread:
                r = {**r, "prune.spread": self.spread[0]}
            out.append(r)
        return out


def uses_ranking(params: dict[str, Any]) -> bool:
    """Whether to_spec() needs the sensitivity ranking for these choices: prune protecting some
    groups, or spreading a ratio over them."""
    return params.get("prune", "off") != "off" and (
        params.get("prune.protect", 0.0) > 0 or (params["prune"] == "ratio" and params.get("prune.spread", 0.0) > 0))


def to_spec(params: dict[str, Any], exact: list[str], sensitive: list[str]) -> str:
    """The pipeline spec of a trial. `exact`: the exact passes that apply to this model, in order;
    `sensitive`: prunable layer names, most sensitive first (from the dry-run scan)."""
    parts = list(exact)
    if params.get("prune", "off") != "off":
        if params["prune"] == "ratio":
            options = [f"ratio={params['prune.ratio']:g}"]
        else:
            options = [f"target-latency={params['prune.target-latency']:g}"]
        if params.get("prune.criterion"):
            options.append(f"criterion={params['prune.criterion']}")
        keep_whole = sensitive[:round(len(sensitive) * params.get("prune.protect", 0.0))]
        if keep_whole:
            options.append("exclude=" + "|".join(keep_whole))
        if params["prune"] == "ratio" and params.get("prune.spread", 0.0) > 0:
            spread = spread_ratios(params["prune.ratio"], params["prune.spread"], sensitive[len(keep_whole):])
            if spread:
                options.append("ratios=" + "|".join(f"{name}={r:g}" for name, r in spread.items()))
        parts.append("prune:" + ",".join(options))
    if params.get("quantize", "off") == "on":
        options = []
        if params.get("quantize.method", "minmax") != "minmax":
            options.append(f"method={params['quantize.method']}")
        if params.get("quantize.max-drop", "none") != "none":
            options.append(f"max-drop={params['quantize.max-drop']}")
        if not params.get("quantize.speed", True):
            options.append("speed=false")
        parts.append("quantize" + (":" + ",".join(options) if options else ""))
    return ",".join(parts) or "cleanup"  # nothing to do is still a spec: the original, as cleanup leaves it


def decided_by_timing(spec: str) -> bool:
    """Whether a pass of `spec` chooses what to build by timing on this CPU (prune's latency target,
    quantize's speed check): run again, it may choose another model."""
    from ..pipeline.spec import parse_spec
    return any((p.name == "prune" and p.options.target_latency is not None)
               or (p.name == "quantize" and p.options.speed) for p in parse_spec(spec))


def spread_ratios(ratio: float, spread: float, ranked: list[str], most: float = 0.9) -> dict[str, float]:
    """Per-group ratios around `ratio`, by rank in the sensitivity scan (`ranked`: layer names, most
    sensitive first): linear from ratio*(1 - spread) on the most sensitive to ratio*(1 + spread) on
    the most robust (at most `most`), to two decimals. Only the groups whose ratio differs from
    `ratio` are named. The budget is spent where the scan says it costs least (as AMC and
    NetAdapt's per-layer allocation do, with the scan in place of their search)."""
    if len(ranked) < 2:
        return {}
    out = {}
    for i, name in enumerate(ranked):
        share = i / (len(ranked) - 1)  # 0 = most sensitive
        r = round(min(most, max(0.0, ratio * (1 + spread * (2 * share - 1)))), 2)
        if abs(r - ratio) > 1e-9:
            out[name] = r
    return out


def spec_safe(name: str) -> bool:
    """A node name that can stand in a spec as an exact-match pattern (no separators, no regex)."""
    return re.fullmatch(r"[A-Za-z0-9_./-]+", name) is not None


def load_space(path: str | Path) -> Space:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise BadInput(f"{p}: cannot read the search space: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text or "{}")
    except Exception as exc:  # noqa: BLE001 - yaml and json raise their own kinds
        raise BadInput(f"{p}: not a YAML/JSON search space: {first_line(exc, None)}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{p}: a search space is a mapping with keys exact, prune, quantize")
    unknown = set(data) - {"exact", "prune", "quantize"}
    if unknown:
        raise BadOption(f"{p}: unknown key(s) {', '.join(sorted(unknown))} (exact, prune, quantize)")
    prune, quantize = data.get("prune") or {}, data.get("quantize") or {}
    fields: dict[str, Any] = {}
    if "exact" in data:
        fields["exact"] = tuple(data["exact"] or ())
        bad = [e for e in fields["exact"] if e not in EXACT]
        if bad:
            raise BadOption(f"{p}: exact passes {bad}: choose from {', '.join(EXACT)}")
    mapping = {("prune", "modes"): "prune_modes", ("prune", "ratio"): "ratio",
               ("prune", "target-latency"): "target_latency", ("prune", "protect"): "protect",
               ("prune", "spread"): "spread", ("prune", "criteria"): "criteria",
               ("quantize", "modes"): "quantize_modes", ("quantize", "methods"): "methods",
               ("quantize", "max-drop"): "max_drop", ("quantize", "speed"): "quantize_speed"}
    for section, values in (("prune", prune), ("quantize", quantize)):
        if not isinstance(values, dict):
            raise BadInput(f"{p}: '{section}' must be a mapping")
        for key, value in values.items():
            field = mapping.get((section, key))
            if field is None:
                known = ", ".join(k for s, k in mapping if s == section)
                raise BadOption(f"{p}: unknown {section} key '{key}' ({known})")
            items = value if isinstance(value, list) else [value]
            if field in ("prune_modes", "quantize_modes"):
                items = ["off" if v is False else "on" if v is True else v for v in items]
            if field == "max_drop":
                items = ["none" if v in (None, "none") else str(float(v)) for v in items]
            if field == "quantize_speed" and any(not isinstance(v, bool) for v in items):
                raise BadOption(f"{p}: quantize speed {items}: true and/or false")
            fields[field] = tuple(items)
    try:
        return Space(**fields)
    except (TypeError, ValueError) as exc:
        raise BadOption(f"{p}: {exc}") from None
