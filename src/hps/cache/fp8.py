"""FP8 (e4m3) row quantisation of whole GPU tables (ps.json `fp8_quant`).

HugeCTR quantised static tables at load time with one float32 scale per vector: scale =
amax(|row|) / 448 (448 is e4m3's largest finite value), each element stored as the e4m3 value
nearest to x / scale, and dequantised on lookup as e4m3 × scale (fp32 out). hps does the same:

- codes: `(n, dim) uint8`, the e4m3fn bit patterns (sign, 4 exponent bits with bias 7, 3 mantissa
  bits; no infinities, 0x7F/0xFF are NaN and never stored);
- scales: `(n,) float32`, amax / 448, at least `MIN_SCALE` (the smallest normal float32) so that
  rows of zeros and rows of float32 subnormals get a usable scale.

Error bound per element (what tests/cache/test_gpu_fp8.py checks): with y = x / scale, |y| <= 448;
e4m3 rounds y to nearest with 3 mantissa bits, so |error| <= 2^-4 |x| where |y| >= 2^-6 (normal
e4m3) and <= 2^-10 × scale below (subnormal steps of 2^-9), plus float32 rounding of the division
and of the product: overall |x̂ - x| <= max(2^-4 |x|, 2^-10 scale)(1 + 2^-20), hence
<= 2^-4 amax for every element of the row. NaN and Inf cannot be scaled: they are refused.
"""

from __future__ import annotations

from typing import Any

from hps.errors import require

torch = require("torch", "gpu")

#: e4m3fn's largest finite magnitude.
E4M3_MAX = 448.0
#: Smallest scale: the smallest normal float32 (keeps x / scale finite and exact-range for tiny rows).
MIN_SCALE = 2.0 ** -126
#: Bytes of float32 work per chunk when quantising (bounds the temporary memory of a large table).
CHUNK_BYTES = 64 << 20


def nonfinite_rows(vectors: Any) -> Any:
    """Row numbers `(m,) int64` of `vectors: (n, dim) float32` holding NaN or ±Inf."""
    return (~torch.isfinite(vectors)).any(dim=1).nonzero().flatten()


def quantize_rows(vectors: Any) -> tuple[Any, Any]:
    """`vectors: (n, dim) float32` tensor (finite; see `nonfinite_rows`) → `(codes (n, dim) uint8,
    scales (n,) float32)` on the same device: codes are e4m3fn bit patterns of vectors / scales."""
    vectors = vectors.to(torch.float32)
    amax = vectors.abs().amax(dim=1) if vectors.shape[1] else torch.zeros(vectors.shape[0], device=vectors.device)
    scales = torch.clamp(amax / E4M3_MAX, min=MIN_SCALE)
    scaled = torch.clamp(vectors / scales[:, None], -E4M3_MAX, E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn).view(torch.uint8), scales


def dequantize_rows(codes: Any, scales: Any) -> Any:
    """`codes: (n, dim) uint8` e4m3fn bits, `scales: (n,) float32` → `(n, dim) float32` (the values a
    lookup returns; the kernels decode the bits themselves)."""
    return codes.view(torch.float8_e4m3fn).to(torch.float32) * scales[:, None]


def chunk_rows(dim: int) -> int:
    """Rows per quantisation chunk for vectors of width `dim` (at least 1)."""
    return max(1, CHUNK_BYTES // (4 * max(1, dim)))
