"""The `nir` package, which the interop modules need and the rest of the library does not.

NIR comes with the `nir` extra (`pip install 'uticket_jax[nir]'`; the `experiments` and `test`
extras include it), so importing `uticket_jax.interop` without it fails with one line saying so.
"""

try:
    import nir
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "uticket_jax.interop needs the NIR package: pip install 'uticket_jax[nir]'"
    ) from e

__all__ = ["nir"]
