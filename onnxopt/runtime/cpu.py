"""What this CPU can do with integers, as onnxruntime's kernels will use it.

onnxruntime's MLAS picks its int8 GEMM by CPU: with AVX512-VNNI, AVX-VNNI or AMX it accumulates
u8 x s8 products exactly in int32 (VPDPBUSD); with only AVX2 or AVX-512BW it multiplies with
VPMADDUBSW, which adds each pair of u8 x s8 products in int16 and *saturates* (255 * 127 * 2 =
64770 > 32767), so a trained model can lose most of its accuracy. ARM's dot-product instructions
do not saturate. The flags come from the OS (/proc/cpuinfo, or sysctl on macOS); what the kernels
really do is asked of onnxruntime itself by `u8s8_saturates()`, a one-node probe.
"""
from __future__ import annotations

import dataclasses
import functools
import platform
import subprocess
from pathlib import Path

import numpy as np

# the flags that decide int8 kernels, as Linux names them
X86_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FLAGS = ("asimddp", "i8mm")  # dot product (SDOT/UDOT), int8 matrix multiply (SMMLA)
_MAC_FLAGS = {  # macOS sysctl hw.optional.* -> the Linux name
    "hw.optional.avx2_0": "avx2", "hw.optional.avx512bw": "avx512bw", "hw.optional.avx512vnni": "avx512_vnni",
    "hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
}


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    arch: str                 # "x86_64", "arm64", or what platform.machine() says
    model: str                # "AMD EPYC 7B13", as the OS names it
    flags: frozenset[str]     # of X86_FLAGS / ARM_FLAGS, the ones present

    @property
    def kind(self) -> str:
        """x86-vnni (exact u8 x s8 products), x86-avx512 / x86-avx2 (saturating in int16), x86
        (older), arm64, or the architecture's own name."""
        if self.arch == "x86_64":
            if self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
                return "x86-vnni"
            if "avx512bw" in self.flags:
                return "x86-avx512"
            return "x86-avx2" if "avx2" in self.flags else "x86"
        return self.arch

    def describe(self) -> str:
        """One line for reports: `AMD EPYC 7B13 (x86-avx2: avx2)`."""
        flags = ", ".join(f for f in (*X86_FLAGS, *ARM_FLAGS) if f in self.flags) or "no int8 extensions"
        return f"{self.model} ({self.kind}: {flags})"

    def as_dict(self) -> dict:
        return {"arch": self.arch, "model": self.model, "kind": self.kind, "flags": sorted(self.flags)}


def _arch() -> str:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "x64", "i386", "i686", "x86"):
        return "x86_64"
    if machine in ("aarch64", "arm64", "armv8l"):
        return "arm64"
    return machine or "unknown"


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """A CpuInfo from the text of /proc/cpuinfo (the first processor's entry)."""
    model, flags, ids = "", set(), {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("cpu implementer", "cpu part"):
            ids.setdefault(key, value.strip())
    if not model and ids:
        # ARM Linux names no model: its implementer and part tell one core from another (0x41 0xd0c,
        # Neoverse N1; 0x41 0xd40, V1), whose ratios do not compare even where their flags are alike
        model = f"implementer {ids.get('cpu implementer', '?')} part {ids.get('cpu part', '?')}"
    wanted = X86_FLAGS if arch == "x86_64" else ARM_FLAGS
    return CpuInfo(arch, model or platform.processor() or arch, frozenset(f for f in wanted if f in flags))


def _sysctl() -> CpuInfo:
    arch = _arch()
    try:
        out = subprocess.run(["sysctl", "-a"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    values = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    flags = frozenset(name for key, name in _MAC_FLAGS.items() if values.get(key, "0").strip() == "1")
    model = values.get("machdep.cpu.brand_string", platform.processor() or arch).strip()
    return CpuInfo(arch, model, flags)


@functools.lru_cache(maxsize=None)
def this_cpu() -> CpuInfo:
    """This machine's CPU. On Linux from /proc/cpuinfo; on macOS from sysctl; elsewhere the
    architecture alone (an x86 then counts as plain x86: the saturating kind, the safe guess)."""
    arch = _arch()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        try:
            return parse_cpuinfo(cpuinfo.read_text(errors="replace"), arch)
        except OSError:
            pass
    if platform.system() == "Darwin":
        return _sysctl()
    return CpuInfo(arch, platform.processor() or arch, frozenset())


@functools.lru_cache(maxsize=None)
def u8s8_saturates() -> bool | None:
    """Whether onnxruntime's u8 x s8 integer GEMM on this machine saturates: a MatMulInteger of
    255s by 127s, whose exact sums do not fit int16 pairs, compared with numpy. None when the probe
    cannot run (then the CPU flags decide)."""
    import onnxruntime as ort
    from onnx import TensorProto

    from ..graph.probes import single_node

    k = 64
    a = np.full((1, k), 255, np.uint8)
    w = np.full((k, 2), 127, np.int8)
    w[:, 1] = -127
    model = single_node("MatMulInteger", (1, k), {"w": w}, x_type=TensorProto.UINT8, y_type=TensorProto.INT32)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": a})[0].astype(np.int64)
    except Exception:  # noqa: BLE001 - a probe that cannot run leaves the decision to the flags
        return None
    return not np.array_equal(got, a.astype(np.int64) @ w.astype(np.int64))


def cpu_summary() -> dict:
    """This CPU for reports: its kind and flags, and what onnxruntime's u8 x s8 kernel does here."""
    return {**this_cpu().as_dict(), "u8s8_saturates": u8s8_saturates()}
