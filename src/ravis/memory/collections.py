"""Collections ravis has a loader for, as sharded memories built once per encoder pair and
cached: what an experiment's ``memory.source`` can name besides its own training split.

The memory is built by :func:`~ravis.memory.shard_build.build_sharded_memory` (what
``ravis memory build`` runs) into a hidden folder beside its final place, which resumes
if interrupted, and renamed into place only once every shard is in: a folder at the final
name is always whole.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import exclusive_lock, sha256_file, stable_hash
from ..config import MemoryBuildConfig
from .shard_build import build_sharded_memory, load_encoders
from .sharded import FORMAT

#: Input shard size: a resumed build redoes at most this many rows.
EMOJI_ROWS_PER_SHARD = 1000


def emoji_memory(cache_dir: Path | str, image_encoder_spec: str = MemoryBuildConfig.image_encoder,
                 text_encoder_spec: str = MemoryBuildConfig.text_encoder, *, root: Path | str | None = None,
                 dtype: str = MemoryBuildConfig.dtype, progress: bool = False) -> Path:
    """The emoji collection (:mod:`ravis.data.emoji`) as a sharded memory folder, built on
    the first call and found again on later ones.

    The folder is ``cache_dir/memories/emoji-<digest>``, the digest covering the encoders'
    fingerprints, ``dtype``, the build's batching and the collection's content (every
    caption, metadata record and PNG's bytes, so the package versions too). Concurrent
    callers wait for the one building.

    Args:
        image_encoder_spec: the keys' encoder: the experiment's image encoder, so that its
            queries can search the memory.
        text_encoder_spec: the values' (captions') encoder.
        root: the folder holding the emoji packages (default ``$RAVIS_DATA/emoji``).

    Returns:
        The memory folder; open it with ``ShardedMemory.open(path, verify=True)``.

    Raises:
        MissingDataError: an emoji package is missing (named; run scripts/setup.sh).
        BadImageError: a PNG does not decode (a damaged download; named).
    """
    from ..data.emoji import default_root, load_emoji

    root = (Path(root) if root is not None else default_root()).resolve()
    images = load_emoji(root)
    settings = MemoryBuildConfig(image_encoder_spec, text_encoder_spec, dtype)
    image_encoder, text_encoder = load_encoders(settings)
    digest = stable_hash("emoji-memory-v1", FORMAT, image_encoder.fingerprint(),
                         text_encoder.fingerprint(), dtype, settings.batch_size,
                         settings.thumbnails, EMOJI_ROWS_PER_SHARD,
                         [(e.key, e.caption, e.meta, sha256_file(e.path)) for e in images])
    memories = Path(cache_dir) / "memories"
    final = memories / f"emoji-{digest}"
    if (final / "manifest.json").is_file():
        return final
    memories.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(memories / f".emoji-{digest}.lock", wait=True):
        if not (final / "manifest.json").is_file():  # nobody built it while we waited
            partial = memories / f".emoji-{digest}.partial"
            # strict: a PNG that fails to decode stops the build rather than leaving a
            # memory without it that later calls would take for the whole collection.
            build_sharded_memory(f"emoji:{root}", partial, image_encoder_spec,
                                 text_encoder_spec, dtype, strict=True, progress=progress,
                                 rows_per_shard=EMOJI_ROWS_PER_SHARD)
            os.replace(partial, final)
    return final

