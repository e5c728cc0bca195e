"""``ravis memory <sub-verb>``: sharded web-scale memories (see :mod:`ravis.cli` for arguments).

One function per sub-verb, ``cmd_<verb>(args) -> exit code``; :func:`ravis.commands.cmd_memory`
dispatches on ``args.memory_verb``.
"""

from __future__ import annotations

import os
import sys
import time


def _use_cache(args) -> None:
    """--cache reaches the encoders (and Ray workers) through RAVIS_CACHE."""
    if getattr(args, "cache", None):
        os.environ["RAVIS_CACHE"] = str(args.cache)


def _summary(memory, seconds: float, built_rows: int | None = None) -> str:
    m = memory.manifest
    lines = [f"{memory.memdir}: {memory.count} rows in {len(memory.shard_names)} shards "
             f"({memory.dim}-d keys, {memory.value_dim}-d values, {memory.dtype}), "
             f"{seconds:.1f} s"]
    if m.get("skipped"):
        lines.append("  skipped rows: " + ", ".join(f"{k} {v}" for k, v in m["skipped"].items()))
    for failed in m.get("failed_shards", []):
        lines.append(f"  failed shard: {failed['error']}")
    return "\n".join(lines)


def _errors():
    from .memory.sources import ShardReadError

    return (ShardReadError,)


def cmd_build(args) -> int:
    from .memory.shard_build import build_sharded_memory

    _use_cache(args)
    t0 = time.perf_counter()
    try:
        memory = build_sharded_memory(
            args.sources, args.out, args.encoder, args.text_encoder, args.dtype,
            engine=args.engine, ray_address=args.ray_address, strict=args.strict,
            thumbnails=not args.no_thumbnails, progress=not args.quiet,
            rows_per_shard=args.rows_per_shard)
    except _errors() as e:
        print(f"ravis memory build: error: {e}", file=sys.stderr)
        return 2
    print(_summary(memory, time.perf_counter() - t0))
    return 0


def cmd_add(args) -> int:
    from .memory.shard_build import add_shards
    from .memory.sharded import ShardedMemory

    _use_cache(args)
    t0 = time.perf_counter()
    try:
        names = add_shards(args.memdir, args.sources, engine=args.engine,
                           ray_address=args.ray_address, strict=args.strict,
                           progress=not args.quiet, rows_per_shard=args.rows_per_shard)
    except _errors() as e:
        print(f"ravis memory add: error: {e}", file=sys.stderr)
        return 2
    memory = ShardedMemory.open(args.memdir)
    print(f"added shards {', '.join(names) or '(none)'}")
    print(_summary(memory, time.perf_counter() - t0))
    return 0


def cmd_verify(args) -> int:
    """Exit 0 when every file matches the manifest; MemoryMismatchError (exit 2) names the
    first bad file otherwise."""
    from .memory.sharded import ShardedMemory

    t0 = time.perf_counter()
    memory = ShardedMemory.open(args.memdir, verify=True)
    files = 3 * len(memory.shard_names)
    print(f"{args.memdir}: OK, {memory.count} rows in {len(memory.shard_names)} shards, "
          f"{files} files checked ({time.perf_counter() - t0:.1f} s)")
    return 0
