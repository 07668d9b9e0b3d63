"""Measured thresholds of `ops.conv.choose_impl`: where the patch matmul beats XLA:CPU's conv.

Every figure was measured on one machine (BUILD_NOTES.md, "Training step", names it and keeps
the per-layer table) by

  python -m benchmarks.bench_train --layers

which times every layer's forward, input gradient and weight gradient under each implementation.
They only steer speed, never results: every
implementation computes the same convolution (tests/test_conv.py). On another CPU, rerun the
benchmark and adjust them here; off the CPU backend `impl="auto"` uses XLA's own convolution and
none of them applies.
"""

# Bytes of one chunk's patch matrix in the weight gradient (measured best near 4-10 MB).
CHUNK_BYTES = 8 * 2**20
# Output sizes Ho*Wo at or below which XLA:CPU's convolution takes its slow path.
TINY_SPATIAL = 4
# The patch weight gradient beats XLA's from Ho*Wo >= 64 outputs, C_in >= 64 channels and
# ~1e9 multiply-adds (N*Ho*Wo*kh*kw*C_in*C_out) up.
BIG_SPATIAL = 64
WIDE_INPUT = 64
MIN_MACS = 2**30
# The chunked patch forward (and stride-1 input gradient) beats XLA for Ho*Wo >= 256 outputs
# with 16 to 64 channels on the narrower side, and for Ho*Wo <= 64 with more on both sides.
MIN_PATCH_CHANNELS = 16
NARROW = 64
BIG_SPATIAL_FWD = 256
SMALL_SPATIAL = 64
