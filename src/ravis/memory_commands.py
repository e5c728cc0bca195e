"""``ravis memory <sub-verb>``: sharded web-scale memories (see :mod:`ravis.cli` for arguments).

One function per sub-verb, ``cmd_memory_<verb>(args) -> exit code``, named apart from the
stage verbs of :mod:`ravis.commands` (``ravis index`` and ``ravis memory index`` differ);
:func:`ravis.commands.cmd_memory` dispatches on ``args.memory_verb``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from .errors import InputError


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


def cmd_memory_build(args) -> int:
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


def cmd_memory_add(args) -> int:
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


def cmd_memory_verify(args) -> int:
    """Exit 0 when every file matches the manifest and, if the memory has a finished index,
    every index file matches index.json (all re-hashed); MemoryMismatchError or
    IndexFileError (exit 2) names the first bad file otherwise."""
    from .memory.indexing import verify_memory_index
    from .memory.sharded import ShardedMemory

    t0 = time.perf_counter()
    memory = ShardedMemory.open(args.memdir)
    memory.verify()  # every byte re-hashed: no stamps trusted
    files = 3 * len(memory.shard_names)
    index_files = verify_memory_index(args.memdir)
    index = ("no index" if index_files is None else
             "index without checksums (saved by an older ravis)" if index_files == 0 else
             f"{index_files} index files checked")
    print(f"{args.memdir}: OK, {memory.count} rows in {len(memory.shard_names)} shards, "
          f"{files} files checked, {index} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_memory_index(args) -> int:
    from .memory.indexing import attach_index, index_memory

    t0 = time.perf_counter()
    if args.from_faiss is not None:
        if args.factory or args.backend != "faiss":
            raise InputError("--from-faiss attaches an existing index: drop --factory and --backend")
        index = attach_index(args.memdir, args.from_faiss, target_recall=args.target_recall, k=args.k)
    else:
        index = index_memory(args.memdir, budget=args.budget, target_recall=args.target_recall, k=args.k,
                             backend=args.backend, factory=args.factory, engine=args.engine,
                             progress=not args.quiet)
    info, tuning = index.info, index.info["tuning"]
    print(f"{args.memdir}/index: {index.spec} over {index.ntotal} vectors "
          f"({info['choice']['reason']}), ready in {time.perf_counter() - t0:.1f} s")
    print(f"  search parameters {tuning['params'] or '(exact)'}: recall@{tuning['k']} "
          f"{tuning['recall_heldout']:.3f} on held-out memory rows (target {tuning['target_recall']}), "
          f"{tuning['qps_heldout']:,.0f} queries/s; {sum(info['bytes_on_disk'].values()) / 2**20:,.1f} MiB on disk")
    if not tuning["reached"]:
        print("  warning: the target recall was not reached; the most accurate setting is kept", file=sys.stderr)
    return 0


def cmd_memory_search(args) -> int:
    import json

    from .index.multi import exact_search
    from .io import load_npy
    from .memory.indexing import key_paths, open_memory_index
    from .memory.sharded import ShardedMemory
    from .memory.store import MemoryMismatchError

    _use_cache(args)
    # every shard checked against its sha256 before a byte is searched (once per file: later
    # opens re-hash only files whose size, mtime or inode changed)
    memory = ShardedMemory.open(args.memdir, verify=True)
    if args.queries is not None:
        queries = load_npy(args.queries)
        if not np.issubdtype(queries.dtype, np.number):
            raise InputError(f"{args.queries}: queries must be numbers, not {queries.dtype}")
        queries = queries.astype(np.float32)
        if queries.ndim != 2 or queries.shape[1] != memory.dim:
            raise InputError(f"{args.queries}: queries are {queries.shape}, the memory's keys are {memory.dim}-d")
        names = [f"query {i}" for i in range(len(queries))]
    elif args.images:
        from .data.images import open_image
        from .encoders import create_image_encoder

        encoder = create_image_encoder(args.encoder)
        if encoder.fingerprint() != memory.key_encoder or encoder.dim != memory.dim:
            raise MemoryMismatchError(f"{args.memdir}: keys were made by {memory.key_encoder!r}, "
                                      f"not by {args.encoder!r}; pass --encoder")
        queries = encoder.encode_pixels(np.stack([encoder.preprocess(open_image(p)) for p in args.images]))
        names = [str(p) for p in args.images]
    else:
        raise InputError("give query images or --queries FILE.npy")
    if args.exact:
        D, I = exact_search([np.load(p, mmap_mode="r") for p in key_paths(memory)], queries, args.k)
    else:
        D, I = open_memory_index(args.memdir).search(queries, args.k)
    rows = entries(memory, np.unique(I[I >= 0]))
    results = [{"query": name, "neighbors": [{"rank": r + 1, "row": int(i), "score": float(d), **rows[int(i)]}
                                             for r, (d, i) in enumerate(zip(Dq, Iq)) if i >= 0]}
               for name, Dq, Iq in zip(names, D, I)]
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for res in results:
        print(res["query"])
        for n in res["neighbors"]:
            print(f"  {n['rank']:>3}  {n['score']:.3f}  {n['id']}  [{n['source']}]  {n['text'][:80]!r}")
    return 0


def entries(memory, rows) -> dict[int, dict]:
    """id, text and source of global memory rows, read from the shards' metadata."""
    from .index.multi import by_part

    out = {}
    for s, pos, local in by_part(rows, memory.offsets):
        meta = memory.meta(s, ["id", "text", "source"]).to_pydict()
        for row, i in zip(rows[pos], local):
            out[int(row)] = {"id": meta["id"][i], "text": meta["text"][i], "source": meta["source"][i]}
    return out


def cmd_memory_import(args) -> int:
    from .memory.clip_retrieval import DiskFullError, import_clip_retrieval

    _use_cache(args)
    t0 = time.perf_counter()
    try:
        memory = import_clip_retrieval(args.src, args.out, args.key_encoder, args.value_encoder,
                                       copy=args.copy, source_name=args.source_name,
                                       progress=not args.quiet)
    except DiskFullError as e:  # not a bug: say so plainly, the rerun resumes
        print(f"ravis memory import: error: {e.strerror}", file=sys.stderr)
        return 2
    print(_summary(memory, time.perf_counter() - t0))
    return 0


def cmd_memory_export(args) -> int:
    from .memory.clip_retrieval import export_clip_retrieval

    n = export_clip_retrieval(args.memdir, args.out, progress=not args.quiet)
    print(f"{args.out}: {n} file triples (img_emb/, text_emb/, metadata/) in the "
          f"{args.format} layout")
    return 0


def cmd_memory_edit(args) -> int:
    import json

    from .data.images import open_image
    from .editor import MemoryEditor
    from .memory.edits import EditError

    _use_cache(args)
    editor = MemoryEditor.open(args.run_dir, args.experiment)
    memory = editor.memory
    before = memory.live_count
    try:
        if args.add:
            if args.label is None and not args.caption:
                raise EditError("--add needs --label or --caption")
            images = [open_image(path) for path in args.add]
            records = editor.add(images, [p.name for p in args.add], label=args.label,
                                 caption=args.caption)
        elif args.delete:
            records = [editor.delete(args.delete)]
        elif args.delete_class:
            records = [editor.delete_class(args.delete_class)]
        elif args.delete_source:
            records = [editor.delete_source(args.delete_source)]
        else:
            changes = dict(_pair(c) for c in args.relabel)
            records = [editor.relabel(changes)]
    except EditError as e:
        print(f"ravis memory edit: error: {e} (nothing was changed)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k not in ("key", "value", "thumbnail")}
                          for r in records], indent=1))
        return 0
    for r in records:
        if r["op"] == "add":
            print(f"added {r['id']}" + (f" (class {r['label']})" if r["label"] else "")
                  + (f": {r['text']}" if r["text"] != r["label"] else ""))
    if records[0]["op"] != "add":
        print(f"{records[0]['op'].replace('_', ' ')}: {before - memory.live_count} entries deleted"
              if records[0]["op"].startswith("delete") else
              f"relabelled {len(records[0]['changes'])} entries")
    print(f"{memory.log.path}: edit {memory.seq}; the memory now has {memory.live_count} live entries")
    return 0


def _pair(text: str) -> tuple[str, str]:
    from .memory.edits import EditError

    entry, sep, label = text.rpartition("=")
    if not sep or not entry or not label:
        raise EditError(f"--relabel takes ID=LABEL, got {text!r}")
    return entry, label


def cmd_memory_compact(args) -> int:
    from .editor import compact

    _use_cache(args)
    t0 = time.perf_counter()
    out = compact(args.run_dir, args.experiment, progress=not args.quiet)
    if not out["folded"]:
        print(f"{args.run_dir}: no edits to fold")
        return 0
    print(f"folded {out['folded']} edits into {out['path']} ({out['rows']} rows), "
          f"{time.perf_counter() - t0:.1f} s")
    return 0
