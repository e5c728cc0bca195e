"""Edits of a finished run's memory: from images, names and labels to edit records.

    >>> import PIL.Image, ravis
    >>> editor = MemoryEditor.open("demo-out", experiment="tuxpaint")
    >>> editor.add([PIL.Image.open("axolotl.png")], ["axolotl.png"], label="animals/amphibians")
    >>> editor.delete(["tuxpaint/animals/amphibians/frog.png"])
    >>> editor.relabel({"tuxpaint/animals/birds/penguin.png": "animals/penguins"})

An added entry is embedded as the run embedded its memory: its key by the experiment's image
encoder (unit-normalised), its value by the value kind of the experiment's memory (the text
encoder on its caption or label prompt, or the value image encoder). A label the classifier
was never trained on is a new class: the model can predict it from the memory alone (see
:class:`ravis.fusion.RetrievalClassifier`). The records go to the experiment's edit log
(:mod:`ravis.memory.edit_log`); a predictor over the same run sees them on its next request.
"""

from __future__ import annotations

import getpass
import uuid
from pathlib import Path

import numpy as np

from .config import ExperimentConfig, RunConfig
from .encoders import create_image_encoder, create_text_encoder
from .encoders.base import l2_normalize
from .memory.edit_log import encode_array
from .memory.edited_view import EditedMemory, EditError
from .run_folder import RunFolder
from .thumbnails import make_thumbnail

MAX_ADD = 256  # images per add (one record each)


class MemoryEditor:
    """Adds, deletes and relabels entries of an experiment's edited memory."""

    def __init__(self, memory: EditedMemory, experiment: ExperimentConfig, run: RunConfig,
                 image_encoder=None):
        self.memory, self.experiment, self.run = memory, experiment, run
        self.image_encoder = image_encoder or create_image_encoder(experiment.encoder)
        self._text_encoder = self._value_encoder = None

    @classmethod
    def open(cls, run_dir: Path | str, experiment: str | None = None) -> "MemoryEditor":
        """The editor of experiment ``experiment`` (default: the first) of a finished run."""
        run = RunFolder(run_dir)
        cfg, _ = run.open()
        exp, folder = run.pick(cfg, experiment)
        return cls(folder.open_edited_memory(), exp, cfg)

    @classmethod
    def for_predictor(cls, predictor) -> "MemoryEditor":
        """Edits the memory a loaded :class:`ravis.predictor.Predictor` predicts from."""
        return cls(predictor.memory, predictor.experiment, predictor.config, predictor.encoder)

    # -- the edits ----------------------------------------------------------------------------
    def add(self, images, names, *, label: str | None = None, caption: str | None = None,
            who: str | None = None) -> list[dict]:
        """One entry per PIL image (``names``: shown in its id, e.g. the file names)."""
        if label is None and not caption:
            raise EditError("an added entry needs --label or --caption")
        if not 0 < len(images) <= MAX_ADD:
            raise EditError(f"add takes 1 to {MAX_ADD} images at a time, got {len(images)}")
        if label is not None and not label.strip():
            raise EditError("the label is empty")
        keys = l2_normalize(self.image_encoder.encode_pixels(
            np.stack([self.image_encoder.preprocess(im) for im in images])))  # (n, d)
        values = self._values(images, label, caption)  # (n, d')
        text = caption or label
        records = []
        for image, name, key, value in zip(images, names, keys, values):
            records.append(self.memory.edit(
                "add", who=self._who(who), id=f"edit/{uuid.uuid4().hex[:8]}/{Path(name).name[:100]}",
                label=label, text=text, source="edits", key=encode_array(key),
                value=encode_array(value), thumbnail=_b64(make_thumbnail(image))))
        return records

    def add_embedded(self, keys: np.ndarray, values: np.ndarray, labels, texts, ids, *,
                     source: str = "edits", thumbnails=None, who: str | None = None) -> list[dict]:
        """Adds entries embedded already (keys by the experiment's image encoder, values as
        its memory makes them), in one write: a bulk import, or a study's held-out classes."""
        keys = l2_normalize(np.asarray(keys, dtype=np.float32))
        thumbnails = thumbnails if thumbnails is not None else [b""] * len(keys)
        entries = [{"id": i, "label": y, "text": t, "source": source, "key": encode_array(k),
                    "value": encode_array(v), "thumbnail": _b64(th)}
                   for k, v, y, t, i, th in zip(keys, values, labels, texts, ids, thumbnails)]
        return self.memory.add_many(entries, who=self._who(who))

    def delete(self, ids, who: str | None = None) -> dict:
        return self.memory.edit("delete", who=self._who(who), ids=list(ids))

    def delete_class(self, name: str, who: str | None = None) -> dict:
        return self.memory.edit("delete_class", who=self._who(who), name=name)

    def delete_source(self, name: str, who: str | None = None) -> dict:
        return self.memory.edit("delete_source", who=self._who(who), name=name)

    def relabel(self, changes: dict[str, str], who: str | None = None) -> dict:
        """``changes``: id -> class name. An entry whose text is its class's name (a label-
        prompt entry, as in fmnist-lt/B) gets the new name as text and the new prompt as
        value; a captioned entry keeps both."""
        ids = list(changes)
        rows = self.memory.rows_of(ids)
        missing = [i for i, r in zip(ids, rows) if r < 0]
        if missing:
            raise EditError(f"no live memory entry {missing[0]!r} to relabel")
        old = self.memory.labels_at(rows)  # (an unknown class is refused by the edit's own check)
        texts = self.memory.meta_at(rows, ["text"])["text"]
        names = self.memory.class_names
        prompt_rows = [j for j, (y, t) in enumerate(zip(old, texts))
                       if self.experiment.memory.values == "label_prompt" and 0 <= y and t == names[y]]
        values = {}
        if prompt_rows:
            labels = sorted({changes[ids[j]] for j in prompt_rows})
            prompts = self._text(self.experiment.memory.prompt.format(label=c) for c in labels)
            values = {c: encode_array(v) for c, v in zip(labels, prompts)}
        prompt_rows = set(prompt_rows)
        out = [[i, changes[i], changes[i] if j in prompt_rows else None] for j, i in enumerate(ids)]
        return self.memory.edit("relabel", who=self._who(who), changes=out, values=values)

    # -- embedding -----------------------------------------------------------------------------
    def _values(self, images, label: str | None, caption: str | None) -> np.ndarray:
        kind, prompt = self.experiment.memory.values, self.experiment.memory.prompt
        if kind == "image":
            if self._value_encoder is None:
                self._value_encoder = create_image_encoder(self.experiment.memory.value_encoder)
            enc = self._value_encoder
            return enc.encode_pixels(np.stack([enc.preprocess(im) for im in images]))
        text = caption if (kind == "caption" and caption) or label is None else prompt.format(label=label)
        return np.repeat(self._text([text]), len(images), axis=0)

    def _text(self, texts) -> np.ndarray:
        if self._text_encoder is None:
            self._text_encoder = create_text_encoder(self.run.text_encoder)
        return np.asarray(self._text_encoder.encode_texts(list(texts)), dtype=np.float32)

    @staticmethod
    def _who(who: str | None) -> str:
        if who is not None:
            return who
        try:
            return getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a container)
            return "unknown"


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------------------
# Compaction


def compact(run_dir: Path | str, experiment: str | None = None, *, rows_per_shard: int = 65536,
            progress: bool = False) -> dict:
    """Folds an experiment's edit log into a new memory part, ``memory/compacted-<seq>``
    (the live rows, relabels applied, in row order), with an index like the one its largest
    indexed part had, and points serving.json at it; the log is kept as
    ``memory-edits.log.folded-<seq>``. A crash at any point leaves a run that serves the same
    answers: serving.json switches in one rename and names the last folded edit, whose
    records replay then skips. Returns {"folded", "rows", "path"}.

    Raises:
        FolderBusyError: a run, eval or another compaction is writing the folder.
    """
    run = RunFolder(run_dir)
    with run.locked(busy=f"{run.path}: a `ravis run`, `eval` or compaction is writing this "
                         "folder; wait for it to finish"):
        editor = MemoryEditor.open(run.path, experiment)
        memory = editor.memory
        folder = run.experiment(editor.experiment.name)
        with memory.log.locked():
            memory.refresh()
            if memory.seq == memory.folded:
                return {"folded": 0, "rows": len(memory), "path": None}
            target = folder.compacted_part(memory.seq)
            saved = _write_live_rows(memory, target, rows_per_shard)
            _index_like(memory.base, saved, editor.experiment, progress)
            folded = memory.seq - memory.folded
            _serve_compacted(folder, memory, saved)  # the switch: from here on, it is served
            run.finish()
            memory.log.path.rename(memory.log.path.with_name(f"{memory.log.path.name}.folded-{memory.seq:06d}"))
        return {"folded": folded, "rows": len(saved), "path": str(target)}


def _serve_compacted(folder, memory: EditedMemory, saved) -> None:
    """Points the experiment's serving.json at the compacted memory ``saved``, in one rename."""
    info = folder.read_serving()
    info["memory"] = {**info["memory"], "class_names": memory.class_names,
                      # the compacted base's classes beyond the trained ones, counted here, so
                      # their votes stay balanced as before (Predictor)
                      "class_counts": {c: n for c, n in memory.class_counts().items()
                                       if c not in info["class_names"]},
                      "edits_folded": memory.seq,
                      "parts": [{"spec": "compacted", "path": str(saved.memdir.relative_to(folder.path)),
                                 "digest": saved.digest, "rows": len(saved), "copied": True}]}
    folder.write_serving(info)


def _write_live_rows(memory: EditedMemory, target: Path, rows_per_shard: int):
    """The memory's live rows as a sharded memory at ``target`` (streamed, a shard at a time)."""
    import shutil

    from .memory.sharded import FORMAT, ShardedMemory, meta_table, save_manifest, write_shard

    if target.exists():  # left by a compaction that was killed before its switch
        shutil.rmtree(target)
    shards, live = [], memory.live_rows(0, len(memory))  # (live,) int64: 8 bytes a row
    for start in range(0, len(live), rows_per_shard):
        rows = live[start:start + rows_per_shard]
        meta = memory.meta_at(rows, ["id", "text", "source", "thumbnail"])
        table = meta_table(meta["id"], meta["text"], meta["source"], memory.labels_at(rows),
                           [t or b"" for t in meta["thumbnail"]], [None] * len(rows))
        name = f"{len(shards):05d}"
        files = write_shard(target, name, memory.keys_at(rows), memory.values_at(rows), table)
        shards.append({"name": name, "input": f"compacted rows of {len(rows)}", "rows": len(rows),
                       "skipped": {}, "files": files})
    save_manifest(target, {"format": FORMAT, "key_encoder": memory.key_encoder,
                           "value_encoder": memory.value_encoder, "dim": memory.dim,
                           "value_dim": memory.value_dim, "dtype": str(memory.dtype),
                           "count": 0, "class_names": memory.class_names, "skipped": {},
                           "sources": ["compacted"], "shards": shards, "failed_shards": []})
    return ShardedMemory.open(target, verify=True)


def _index_like(base, saved, experiment: ExperimentConfig, progress: bool) -> None:
    """Builds the compacted memory an index like the one its largest indexed part had (parts
    without one are searched exactly at load, as before)."""
    from .index.base import read_meta
    from .memory.indexing import INDEX_DIR, has_index, index_memory
    from .memory.sharded import ShardedMemory

    indexed = [m for _, m in base.parts if isinstance(m, ShardedMemory) and has_index(m.memdir)]
    if not indexed:
        return
    largest = max(indexed, key=len)
    choice = read_meta(largest.memdir / INDEX_DIR)["info"]["choice"]
    index_memory(saved.memdir, budget=experiment.retrieval.budget, factory=choice["factory"],
                 target_recall=experiment.retrieval.target_recall, k=experiment.retrieval.k,
                 progress=progress)
