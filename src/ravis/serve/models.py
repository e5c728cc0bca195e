"""The models one server offers: every servable trained method of every experiment of a run,
each loaded on first use (a memory is opened memory-mapped, so an idle one costs little).

Requests choose with ``?experiment=NAME&method=NAME`` (default: the model ``ravis serve`` was
started with); ``GET /models`` lists the choices and ``GET /samples`` a few test images of
the chosen experiment for the page to offer.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .uploads import ApiError

SAMPLES = 8  # test images offered per experiment: the first of as many classes


class ServedModels:
    """Predictors by (experiment, method), the started one first; others load on demand."""

    def __init__(self, default, run_dir: Path | None = None, load_options: dict | None = None):
        self.default = default
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._options = dict(load_options or {})
        self._loaded = {(default.experiment.name, default.method): default}
        self._lock = threading.Lock()
        self._samples: dict[str, list[tuple[str, str, bytes]]] = {}

    def choices(self) -> list[dict]:
        """Every (experiment, method) this server can serve; without a run folder, the one."""
        if self.run_dir is None:
            return [{"experiment": self.default.experiment.name, "method": self.default.method}]
        from ..methods import method as get_method
        from ..run_folder import RunFolder

        out = []
        for exp in self.default.config.experiments:
            folder = RunFolder(self.run_dir).experiment(exp.name)
            for m in exp.methods:
                # a fine-tuned model (its encoder beside it) is not servable yet
                if get_method(m).servable and folder.has_servable_weights(m):
                    out.append({"experiment": exp.name, "method": m})
        return out

    def get(self, experiment: str | None = None, method: str | None = None):
        """The predictor of ``experiment`` / ``method`` (None: the started one's)."""
        key = (experiment or self.default.experiment.name, method or self.default.method)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            if {"experiment": key[0], "method": key[1]} not in self.choices():
                raise ApiError(404, "unknown_model", f"this server has no model {key[1]!r} of "
                                                     f"experiment {key[0]!r}; GET /models lists them")
            from ..predictor import Predictor

            predictor = Predictor.load(self.run_dir, key[0], key[1], **self._options)
            self._loaded[key] = predictor
            return predictor

    def samples(self, experiment: str | None = None) -> list[tuple[str, str, bytes]]:
        """(test id, true class, image bytes) of a few test images: the first test image of
        each of the first SAMPLES classes, from the run's thumbnails."""
        name = experiment or self.default.experiment.name
        if name not in self._samples:
            self._samples[name] = self._read_samples(name)
        return self._samples[name]

    def _read_samples(self, name: str) -> list[tuple[str, str, bytes]]:
        if self.run_dir is None:
            return []
        from ..run_folder import RunFolder
        from ..thumbnails import ThumbnailStore

        folder = RunFolder(self.run_dir).experiment(name)
        try:
            ids = folder.read_test_ids()
            with np.load(folder.predictions) as f:
                labels = f["labels"]
            store = ThumbnailStore.open(folder.test_thumbnails)
        except (OSError, KeyError, ValueError):  # an older run folder: no samples to offer
            return []
        names = self.get(name).class_names
        out, seen = [], set()
        for i, y in zip(ids, labels):
            found = store.get(i)
            if found and int(y) not in seen:
                seen.add(int(y))
                out.append((i, names[int(y)], found[0]))
            if len(out) == SAMPLES:
                break
        return out


__all__ = ["ServedModels"]
