"""``ravis memory <verb>``: sharded web-scale memories: build, add, verify, index, search,
edit, compact, import, export. (``ravis index`` builds an experiment's index; ``ravis memory
index`` a memory folder's.)"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..config import MEMORY_DTYPES, MemoryBuildConfig, RetrievalConfig, RunConfig
from ._arguments import add_cache, export_cache


def add_verbs(sub) -> None:
    memory = sub.add_parser("memory", help="build, extend and check sharded image-text memories")
    verbs = memory.add_subparsers(dest="memory_verb", required=True, metavar="VERB",
                                  help="what to do to the memory (ravis memory VERB --help)")
    for add in (add_build, add_add, add_verify, add_index, add_edit, add_compact, add_search,
                add_import, add_export):
        add(verbs)


def _sources(p) -> None:
    p.add_argument("--source", dest="sources", action="append", required=True, metavar="SPEC",
                   help="wds:PATTERN (tar shards, braces allowed), parquet:PATTERN[:IMAGE_COL"
                        "[:CAPTION_COL]], imagefolder:PATH, tuxpaint[:ROOT], emoji[:ROOT] "
                        "(repeatable)")
    p.add_argument("--rows-per-shard", type=int, default=MemoryBuildConfig.rows_per_shard,
                   help="shard size for folder sources (a tar or parquet file is one shard)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="this process, or one Ray task per input shard")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--strict", action="store_true",
                   help="a skipped row, an empty or unreadable shard is an error")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cache(p, "models")


def _summary(memory, seconds: float) -> str:
    m = memory.manifest
    lines = [f"{memory.memdir}: {memory.count} rows in {len(memory.shard_names)} shards "
             f"({memory.dim}-d keys, {memory.value_dim}-d values, {memory.dtype}), "
             f"{seconds:.1f} s"]
    if m.get("skipped"):
        lines.append("  skipped rows: " + ", ".join(f"{k} {v}" for k, v in m["skipped"].items()))
    for failed in m.get("failed_shards", []):
        lines.append(f"  failed shard: {failed['error']}")
    return "\n".join(lines)


def add_build(verbs) -> None:
    p = verbs.add_parser("build", help="embed image-text collections into a sharded memory (resumes)")
    _sources(p)
    p.add_argument("--out", type=Path, required=True, help="the memory folder (MEMDIR)")
    p.add_argument("--encoder", default=MemoryBuildConfig.image_encoder, help="image encoder spec (keys)")
    p.add_argument("--text-encoder", default=MemoryBuildConfig.text_encoder, help="text encoder spec (values)")
    p.add_argument("--dtype", choices=MEMORY_DTYPES, default=MemoryBuildConfig.dtype,
                   help="stored dtype of keys and values")
    p.add_argument("--no-thumbnails", action="store_true", help="no 64 px thumbnails in the metadata")
    p.set_defaults(handler=build)


def build(args) -> None:
    from ..memory.shard_build import build_sharded_memory

    export_cache(args)
    t0 = time.perf_counter()
    memory = build_sharded_memory(
        args.sources, args.out, args.encoder, args.text_encoder, args.dtype,
        engine=args.engine, ray_address=args.ray_address, strict=args.strict,
        thumbnails=not args.no_thumbnails, progress=not args.quiet,
        rows_per_shard=args.rows_per_shard)
    print(_summary(memory, time.perf_counter() - t0))


def add_add(verbs) -> None:
    p = verbs.add_parser("add", help="append shards from new sources to a memory (and its index)")
    p.add_argument("memdir", type=Path, help="a memory folder (ravis memory build --out)")
    _sources(p)
    p.set_defaults(handler=add)


def add(args) -> None:
    from ..memory.shard_build import add_shards
    from ..memory.sharded import ShardedMemory

    export_cache(args)
    t0 = time.perf_counter()
    names = add_shards(args.memdir, args.sources, engine=args.engine, ray_address=args.ray_address,
                       strict=args.strict, progress=not args.quiet, rows_per_shard=args.rows_per_shard)
    print(f"added shards {', '.join(names) or '(none)'}")
    print(_summary(ShardedMemory.open(args.memdir), time.perf_counter() - t0))


def add_verify(verbs) -> None:
    p = verbs.add_parser("verify", help="re-check a memory's checksums, shapes and row counts, "
                                        "and its index's checksums")
    p.add_argument("memdir", type=Path, help="a memory folder (ravis memory build --out)")
    p.set_defaults(handler=verify)


def verify(args) -> None:
    """Every file re-hashed against the manifest and, where the memory has a finished index,
    every index file against index.json; MemoryMismatchError or IndexFileError (exit 2)
    names the first bad file."""
    from ..memory.indexing import verify_memory_index
    from ..memory.sharded import ShardedMemory

    t0 = time.perf_counter()
    memory = ShardedMemory.open(args.memdir)
    memory.verify()  # every byte re-hashed: no stamps trusted
    index_files = verify_memory_index(args.memdir)
    index = ("no index" if index_files is None else
             "index without checksums (saved by an older ravis)" if index_files == 0 else
             f"{index_files} index files checked")
    print(f"{args.memdir}: OK, {memory.count} rows in {len(memory.shard_names)} shards, "
          f"{3 * len(memory.shard_names)} files checked, {index} ({time.perf_counter() - t0:.1f} s)")


def add_index(verbs) -> None:
    p = verbs.add_parser("index", help="choose, build and tune the memory's k-NN index for a RAM budget")
    p.add_argument("memdir", type=Path, help="a memory folder (ravis memory build --out)")
    p.add_argument("--budget", default=RetrievalConfig.budget,
                   help="RAM the index may use while searching (e.g. 16G)")
    p.add_argument("--target-recall", type=float, default=RetrievalConfig.target_recall,
                   help="recall@k the search parameters must reach")
    p.add_argument("--k", type=int, default=RetrievalConfig.k, help="neighbours per query the recall is measured at")
    p.add_argument("--backend", choices=["faiss", "scann"], default="faiss", help="the index library")
    p.add_argument("--factory", default=None, help="a faiss factory string instead of the budget's choice")
    p.add_argument("--from-faiss", type=Path, default=None, metavar="FILE",
                   help="attach this faiss index (e.g. autofaiss's knn.index, with its infos.json) "
                        "instead of building one; its search parameters are tuned the same way")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="encode the shards into the index here, or one Ray task per shard")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=index)


def index(args) -> None:
    from ..errors import InputError
    from ..memory.indexing import attach_index, index_memory

    t0 = time.perf_counter()
    if args.from_faiss is not None:
        if args.factory or args.backend != "faiss":
            raise InputError("--from-faiss attaches an existing index: drop --factory and --backend")
        built = attach_index(args.memdir, args.from_faiss, target_recall=args.target_recall, k=args.k)
    else:
        built = index_memory(args.memdir, budget=args.budget, target_recall=args.target_recall, k=args.k,
                             backend=args.backend, factory=args.factory, engine=args.engine,
                             progress=not args.quiet)
    info, tuning = built.info, built.info["tuning"]
    print(f"{args.memdir}/index: {built.spec} over {built.ntotal} vectors "
          f"({info['choice']['reason']}), ready in {time.perf_counter() - t0:.1f} s")
    print(f"  search parameters {tuning['params'] or '(exact)'}: recall@{tuning['k']} "
          f"{tuning['recall_heldout']:.3f} on held-out memory rows (target {tuning['target_recall']}), "
          f"{tuning['qps_heldout']:,.0f} queries/s; {sum(info['bytes_on_disk'].values()) / 2**20:,.1f} MiB on disk")
    if not tuning["reached"]:
        print("  warning: the target recall was not reached; the most accurate setting is kept", file=sys.stderr)


def add_search(verbs) -> None:
    p = verbs.add_parser("search", help="the memory entries nearest to images (uses the built index)")
    p.add_argument("memdir", type=Path, help="a memory folder (ravis memory build --out)")
    p.add_argument("images", nargs="*", type=Path, help="query images")
    p.add_argument("--queries", type=Path, help="instead of images: a .npy of (n, d) query embeddings")
    p.add_argument("--encoder", default=RunConfig.encoder, help="the image encoder that made the keys")
    p.add_argument("--k", type=int, default=10, help="entries per query")
    p.add_argument("--exact", action="store_true", help="exact search over the key shards instead of the index")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_cache(p, "models")
    p.set_defaults(handler=search)


def search(args) -> None:
    from ..memory.search import embedded_queries, search_memory
    from ..memory.sharded import ShardedMemory

    export_cache(args)
    # every shard checked against its sha256 before a byte is searched (once per file: later
    # opens re-hash only files whose size, mtime or inode changed)
    memory = ShardedMemory.open(args.memdir, verify=True)
    names, queries = embedded_queries(memory, args.images, args.queries, args.encoder)
    results = search_memory(memory, queries, args.k, exact=args.exact)
    results = [{"query": name, "neighbors": found} for name, found in zip(names, results)]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for res in results:
        print(res["query"])
        for n in res["neighbors"]:
            print(f"  {n['rank']:>3}  {n['score']:.3f}  {n['id']}  [{n['source']}]  {n['text'][:80]!r}")


def add_edit(verbs) -> None:
    p = verbs.add_parser("edit", help="add, delete or relabel entries of a finished run's memory; "
                                      "served models use the edited memory with no retraining")
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    p.add_argument("--experiment", help="which experiment's memory (default: the run's first)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--add", nargs="+", type=Path, metavar="IMAGE",
                      help="images to add, with --label and/or --caption")
    what.add_argument("--delete", nargs="+", metavar="ID", help="entry ids to delete")
    what.add_argument("--delete-class", metavar="NAME", help="delete every entry of this class")
    what.add_argument("--delete-source", metavar="NAME", help="delete every entry of this source")
    what.add_argument("--relabel", nargs="+", metavar="ID=LABEL", help="give entries another class")
    p.add_argument("--label", help="the class of the added images; a name the model was not "
                                   "trained on makes a new class, predicted from the memory")
    p.add_argument("--caption", help="the caption of the added images")
    p.add_argument("--json", action="store_true", help="print the edit records as JSON")
    add_cache(p, "models")
    p.set_defaults(handler=edit)


def edit(args) -> None:
    from ..editor import MemoryEditor
    from ..memory.edited_view import EditError

    export_cache(args)
    editor = MemoryEditor.open(args.run_dir, args.experiment)
    before = editor.memory.live_count
    try:
        records = _edit(editor, args)
    except EditError as e:
        raise EditError(f"{e} (nothing was changed)") from None
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k not in ("key", "value", "thumbnail")}
                          for r in records], indent=1))
        return
    memory = editor.memory
    for r in records:
        if r["op"] == "add":
            print(f"added {r['id']}" + (f" (class {r['label']})" if r["label"] else "")
                  + (f": {r['text']}" if r["text"] != r["label"] else ""))
    if records[0]["op"] != "add":
        print(f"{records[0]['op'].replace('_', ' ')}: {before - memory.live_count} entries deleted"
              if records[0]["op"].startswith("delete") else
              f"relabelled {len(records[0]['changes'])} entries")
    print(f"{memory.log.path}: edit {memory.seq}; the memory now has {memory.live_count} live entries")


def _edit(editor, args) -> list[dict]:
    """The records of the one edit the arguments ask for."""
    from ..data.images import open_image
    from ..memory.edited_view import EditError

    if args.add:
        if args.label is None and not args.caption:
            raise EditError("--add needs --label or --caption")
        images = [open_image(path) for path in args.add]
        return editor.add(images, [p.name for p in args.add], label=args.label, caption=args.caption)
    if args.delete:
        return [editor.delete(args.delete)]
    if args.delete_class:
        return [editor.delete_class(args.delete_class)]
    if args.delete_source:
        return [editor.delete_source(args.delete_source)]
    return [editor.relabel(dict(_pair(c) for c in args.relabel))]


def _pair(text: str) -> tuple[str, str]:
    from ..memory.edited_view import EditError

    entry, sep, label = text.rpartition("=")
    if not sep or not entry or not label:
        raise EditError(f"--relabel takes ID=LABEL, got {text!r}")
    return entry, label


def add_compact(verbs) -> None:
    p = verbs.add_parser("compact", help="fold a run's memory edits into new shards and a new index")
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    p.add_argument("--experiment", help="which experiment's memory (default: the run's first)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cache(p, "models")
    p.set_defaults(handler=compact)


def compact(args) -> None:
    from ..editor import compact as compact_edits

    export_cache(args)
    t0 = time.perf_counter()
    out = compact_edits(args.run_dir, args.experiment, progress=not args.quiet)
    if not out["folded"]:
        print(f"{args.run_dir}: no edits to fold")
        return
    print(f"folded {out['folded']} edits into {out['path']} ({out['rows']} rows), "
          f"{time.perf_counter() - t0:.1f} s")


def add_import(verbs) -> None:
    p = verbs.add_parser("import", help="a memory from clip-retrieval / LAION embeddings "
                                        "(img_emb/, text_emb/, metadata/; resumes)")
    p.add_argument("src", type=Path, help="the folder holding img_emb/, text_emb/, metadata/")
    p.add_argument("--out", type=Path, required=True, help="the memory folder (MEMDIR)")
    p.add_argument("--key-encoder", required=True, metavar="SPEC",
                   help="image encoder spec that made img_emb (recorded; its dim must match)")
    p.add_argument("--value-encoder", required=True, metavar="SPEC",
                   help="text encoder spec that made text_emb (recorded; its dim must match)")
    p.add_argument("--copy", action="store_true",
                   help="copy the .npy files into MEMDIR (default: the manifest points at them)")
    p.add_argument("--source-name", default=None,
                   help="every row's source (default: the source column, else SRC's name)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cache(p, "models")
    p.set_defaults(handler=import_memory)


def import_memory(args) -> None:
    from ..memory.clip_retrieval import import_clip_retrieval

    export_cache(args)
    t0 = time.perf_counter()
    memory = import_clip_retrieval(args.src, args.out, args.key_encoder, args.value_encoder,
                                   copy=args.copy, source_name=args.source_name,
                                   progress=not args.quiet)
    print(_summary(memory, time.perf_counter() - t0))


def add_export(verbs) -> None:
    p = verbs.add_parser("export", help="write a memory in another tool's layout")
    p.add_argument("memdir", type=Path, help="a memory folder (ravis memory build --out)")
    p.add_argument("--format", choices=["clip-retrieval"], required=True,
                   help="clip-retrieval: img_emb/, text_emb/, metadata/ (as LAION publishes)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=export)


def export(args) -> None:
    from ..memory.clip_retrieval import export_clip_retrieval

    n = export_clip_retrieval(args.memdir, args.out, progress=not args.quiet)
    print(f"{args.out}: {n} file triples (img_emb/, text_emb/, metadata/) in the "
          f"{args.format} layout")
