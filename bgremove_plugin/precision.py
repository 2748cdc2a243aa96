"""The number format the network runs in, and which one "auto" picks.

CPUs with bfloat16 instructions (Intel AVX512-BF16 and AMX since Cooper Lake and Sapphire Rapids, AMD Zen 4)
run the network about 2.6 times faster in bfloat16 than in float32 (oneDNN; 151 against 394 ms per
1024x768 photo on 2 cores of a Sapphire Rapids Xeon, ``benchmarks/speed.py``), and the cut-outs stay
within 0.001 IoU of float32's on the CCP and COCO test photos (``benchmarks/precision.py``). Elsewhere bfloat16 is emulated and
slower, so "auto" keeps float32 there; on GPUs "auto" keeps float32 too, and ``"bfloat16"`` is the opt-in.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "Precision", "check_precision", "cpu_has_bfloat16", "resolve_precision"]

log = logging.getLogger(__name__)

Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as oneDNN, which torch uses, sees it."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.backends.mkldnn.is_available() and any(check() for check in checks if check is not None)


def check_precision(precision: str, *, onnx: bool) -> None:
    """Raises InvalidArgumentError for an unknown precision, or bfloat16 asked of ONNX Runtime (float32 only)."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if precision == "bfloat16" and onnx:
        raise InvalidArgumentError("backend='onnx' runs in float32; use precision='float32', or backend='torch' for bfloat16")


def resolve_precision(precision: str, device: torch.device, *, onnx: bool) -> Literal["float32", "bfloat16"]:
    """The precision to run in: ``precision`` itself, or for ``"auto"`` bfloat16 on a CPU that has it natively.

    Raises:
        InvalidArgumentError: as :func:`check_precision`.
    """
    check_precision(precision, onnx=onnx)
    if precision == "auto":
        return "bfloat16" if not onnx and device.type == "cpu" and cpu_has_bfloat16() else "float32"
    if precision == "bfloat16" and device.type == "cpu" and not cpu_has_bfloat16():
        log.warning("this CPU has no native bfloat16: precision='bfloat16' is emulated and slower than float32")
    return precision  # type: ignore[return-value]
