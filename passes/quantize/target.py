"""The CPU a quantized model is made for, and the integer format that follows from it.

onnxruntime's int8 kernels differ by CPU (see onnxopt.runtime.cpu): with VNNI (or AMX, or ARM's dot
products) u8 x s8 products accumulate exactly; on AVX2 and AVX-512BW without VNNI each pair of
products is summed in int16 and saturates, so weights there are bounded in pairs (scheme.
weight_qparams(pair_bound=True)). `auto` is this CPU, as its flags name it and as a probe of
onnxruntime's kernel confirms.
"""
from __future__ import annotations

import dataclasses

from onnxopt.errors import BadData
from onnxopt.runtime.cpu import this_cpu, u8s8_saturates


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    activations: str      # uint8 | int8
    pair_bound: bool      # weights bounded so that two u8 x s8 products fit int16
    about: str

    @property
    def int8_fused(self) -> bool | None:
        """Whether onnxruntime on this target fuses QDQ units with int8 activations into integer
        kernels: on ARM builds only (analysis.fusion); None for a CPU kind not named here."""
        if self.name == "arm64":
            return True
        return False if self.name.startswith("x86") else None

    @property
    def weights(self) -> str:
        return "int8, pair-bounded (no int16 saturation)" if self.pair_bound else "int8"


TARGETS = {
    "x86-vnni": Target("x86-vnni", "uint8", False, "x86 with AVX512-VNNI, AVX-VNNI or AMX: exact int32 products"),
    "x86-avx512": Target("x86-avx512", "uint8", True, "x86 with AVX-512BW, no VNNI: u8 x s8 pairs saturate in int16"),
    "x86-avx2": Target("x86-avx2", "uint8", True, "x86 with AVX2, no VNNI: u8 x s8 pairs saturate in int16"),
    "arm64": Target("arm64", "int8", False, "ARM64 (dot-product kernels do not saturate)"),
}
NAMES = ("auto", *TARGETS)


def resolve(name: str) -> tuple[Target, bool]:
    """The target and whether it is this CPU's own (its speed and deployed fidelity measurable
    here). `auto`: this CPU; where the probe of onnxruntime's kernel disagrees with the flags,
    the probe wins (it is what will run)."""
    here = native_target()
    if name == "auto":
        return here, True
    if name not in TARGETS:
        raise BadData(f"quantize: unknown target '{name}'; choose one of {', '.join(NAMES)}")
    target = TARGETS[name]
    return target, (target.activations, target.pair_bound) == (here.activations, here.pair_bound)


def native_target() -> Target:
    cpu = this_cpu()
    kind = cpu.kind
    if kind == "x86":  # SSE only: onnxruntime's kernels there are not documented; bound the pairs to be safe
        kind = "x86-avx2"
    target = TARGETS.get(kind) or Target(kind, "int8", False, f"{kind}: int8 activations (onnxruntime's kernels "
                                                              "here are not known to saturate)")
    saturates = u8s8_saturates() if target.activations == "uint8" else None
    if saturates is not None and saturates != target.pair_bound:
        target = TARGETS["x86-avx2" if saturates else "x86-vnni"]
    return target
