"""JAX's persistent compilation cache, switched on in one call."""

from __future__ import annotations

import os

import jax

__all__ = ["enable_compilation_cache"]


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str:
    """Cache compiled programs on disk so a second run of the same configuration skips XLA.

    Sets ``jax_compilation_cache_dir`` (default ``$SLT_JAX_CACHE`` or
    ``~/.cache/slt_jax/xla``) and caches every program regardless of its compile time or size
    (JAX's defaults skip programs that compile in under a second, which is most of ours).
    Measured on a DLN 10-10-10 (4 chains × 2000 steps, 2-core CPU): a whole
    ``python script.py`` that samples and estimates the LLC takes 3.3 s cold and 1.5 s warm.
    Returns the directory used.

    Args:
      directory: where to keep the cache (default ``$SLT_JAX_CACHE`` or
        ``~/.cache/slt_jax/xla``); created if missing.

    Returns:
      the directory used, as a string.
    """
    if directory is None:
        directory = os.environ.get(
            "SLT_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "slt_jax", "xla")
        )
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory
