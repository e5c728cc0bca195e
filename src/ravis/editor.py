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
(:mod:`ravis.memory.edits`); a predictor over the same run sees them on its next request.
"""

from __future__ import annotations

import getpass
import uuid
from pathlib import Path

import numpy as np

from .config import ExperimentConfig, RunConfig
from .encoders import create_image_encoder, create_text_encoder
from .encoders.base import l2_normalize
from .memory.edits import LOG_NAME, EditedMemory, EditError, encode_array
from .run_folder import experiment_dir, open_run, open_run_memory, read_serving
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
        run_dir = Path(run_dir)
        cfg, _ = open_run(run_dir)
        names = [e.name for e in cfg.experiments]
        exp = next((e for e in cfg.experiments if e.name == (experiment or names[0])), None)
        if exp is None:
            raise ValueError(f"{run_dir}: no experiment {experiment!r}; it has {names}")
        folder = experiment_dir(run_dir, exp.name)
        memory = EditedMemory(open_run_memory(folder, read_serving(folder)), folder / LOG_NAME)
        return cls(memory, exp, cfg)

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
        unknown = [c for c in changes.values() if c not in self.memory.class_names]
        if unknown:
            raise EditError(f"unknown class {unknown[0]!r} for a relabel; known: "
                            f"{', '.join(self.memory.class_names[:20])}")
        old = self.memory.labels_at(rows)
        texts = self.memory.meta_at(rows, ["text"])["text"]
        names = self.memory.class_names
        prompt_rows = [j for j, (y, t) in enumerate(zip(old, texts))
                       if self.experiment.memory.values == "label_prompt" and 0 <= y and t == names[y]]
        new_values = {}
        if prompt_rows:
            labels = sorted({changes[ids[j]] for j in prompt_rows})
            prompts = self._text(self.experiment.memory.prompt.format(label=c) for c in labels)
            new_values = dict(zip(labels, prompts))
        out = []
        for j, i in enumerate(ids):
            label = changes[i]
            if j in set(prompt_rows):
                out.append([i, label, label, encode_array(new_values[label])])
            else:
                out.append([i, label, None, None])
        return self.memory.edit("relabel", who=self._who(who), changes=out)

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
