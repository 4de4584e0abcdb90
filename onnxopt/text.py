"""Text every command prints: plain tables, human-readable numbers, strict JSON.

Hand-written on purpose (as are the progress bars in cli.py): measured on an AVX2 EPYC, importing
rich.progress costs 71-99 ms and rich.table 45 ms (rich also brings pygments and markdown-it, 13 MB),
tqdm 66-70 ms, against 0.08 s for all of `onnxopt --help`; these 60 lines and cli.py's 40 do what
onnxopt needs: aligned columns that stay plain when piped, and one status line on stderr."""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence


def _finite(value):
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return float(value) if math.isfinite(value) else None  # numpy floats too
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(data) -> str:
    """Indented JSON that strict parsers (jq, JavaScript) accept: an infinite or NaN number (the
    error of an output whose shape changed, say) becomes null; other objects become strings."""
    return json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n"


def human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "?"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}" if isinstance(n, float) else f"{n}{unit}"


def human_bytes(n: int) -> str:
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {suffix}"
    return f"{n} B"


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None, indent: str = "",
          align: str = "") -> str:
    """Plain-text table. `align` has one letter per column, l or r (default: first l, rest r)."""
    all_rows = [list(map(str, header))] if header else []
    all_rows += [list(map(str, r)) for r in rows]
    if not all_rows:
        return ""
    widths = [max(len(r[i]) if i < len(r) else 0 for r in all_rows) for i in range(max(map(len, all_rows)))]
    lines = []
    for k, r in enumerate(all_rows):
        cells = [c.rjust(widths[i]) if (align[i:i + 1] or ("r" if i else "l")) == "r" else c.ljust(widths[i])
                 for i, c in enumerate(r)]
        lines.append(indent + "  ".join(cells).rstrip())
        if header and k == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)
