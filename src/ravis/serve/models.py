"""The models one server offers: every servable trained method of every experiment of a run,
each loaded on first use (a memory is opened memory-mapped, so an idle one costs little).

Requests choose with ``?experiment=NAME&method=NAME`` (default: the model ``ravis serve`` was
started with); ``GET /models`` lists the choices, each named by what is served, and
``GET /samples`` a few test images of the chosen experiment, with the prediction the run
evaluated for each, for the page to offer.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .uploads import ApiError



class ServedModels:
    """Predictors by (experiment, method), the started one first; others load on demand."""

    def __init__(self, default, run_dir: Path | None = None, load_options: dict | None = None):
        self.default = default
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._options = dict(load_options or {})
        self._loaded = {(default.experiment.name, default.method): default}
        self._lock = threading.Lock()
        self._samples: dict[str, list[dict]] = {}  # the sample images, by experiment

    def choices(self) -> list[dict]:
        """Every (experiment, method) this server can serve, with the name of what is served
        ("label"); without a run folder, the one."""
        if self.run_dir is None:
            return [{"experiment": self.default.experiment.name, "method": self.default.method,
                     "label": self.default.method_label}]
        from ..methods import method as get_method
        from ..run_folder import RunFolder

        out = []
        for exp in self.default.config.experiments:
            folder = RunFolder(self.run_dir).experiment(exp.name)
            for m in exp.methods:
                # a fine-tuned model (its encoder beside it) is not servable yet
                if get_method(m).servable and folder.has_servable_weights(m):
                    out.append({"experiment": exp.name, "method": m, "label": self._label(folder, m)})
        return out

    @staticmethod
    def _label(folder, method: str) -> str:
        """What is served as ``method`` by name ("MAM (memory attention), kept: kNN vote")."""
        from ..evaluation.tables import served_label

        kept = folder.read_serving().get("kept", {}).get(method) if folder.serving.is_file() else None
        return served_label(method, kept)

    def require_experiment(self, name: str | None) -> None:
        """Refuses (404 unknown_experiment) an experiment this server does not offer, listing
        those it does; None (the started one) passes."""
        if self.run_dir is None:
            names = [self.default.experiment.name]
        else:
            names = [e.name for e in self.default.config.experiments]
        if name is not None and name not in names:
            raise ApiError(404, "unknown_experiment", f"this server has no experiment {name!r}; "
                                                      f"it has {names} (GET /models lists the models)")

    def get(self, experiment: str | None = None, method: str | None = None):
        """The predictor of ``experiment`` / ``method`` (None: the started one's)."""
        key = (experiment or self.default.experiment.name, method or self.default.method)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            self._require_model(key)
            from ..predictor import Predictor

            predictor = Predictor.load(self.run_dir, key[0], key[1], **self._options)
            self._loaded[key] = predictor
            return predictor

    def _require_model(self, key: tuple[str, str]) -> None:
        """Refuses (404 unknown_model) an (experiment, method) this server does not serve."""
        if not any((c["experiment"], c["method"]) == key for c in self.choices()):
            raise ApiError(404, "unknown_model", f"this server has no model {key[1]!r} of "
                                                 f"experiment {key[0]!r}; GET /models lists them")

    def sample_images(self, experiment: str | None = None) -> list[dict]:
        """A few of the experiment's test images at full resolution (the run folder's stored
        copies), each with its id, test row, true class and image bytes; read once."""
        name = experiment or self.default.experiment.name
        if name not in self._samples:
            self._samples[name] = self._read_samples(name)
        return self._samples[name]

    def samples(self, experiment: str | None = None, method: str | None = None) -> list[dict]:
        """:meth:`sample_images`, each with the prediction the run evaluated for ``method``
        (default: the started one's) and its calibrated probability, which uploading the
        image gives again."""
        key = (experiment or self.default.experiment.name, method or self.default.method)
        self._require_model(key)
        images = self.sample_images(key[0])
        if not images:
            return []
        from ..evaluation.calibration import method_logits, softmax
        from ..run_folder import RunFolder

        folder = RunFolder(self.run_dir).experiment(key[0])
        info = folder.read_serving()
        names, temperature = info["class_names"], float(info.get("temperature", {}).get(key[1], 1.0))
        with np.load(folder.predictions, allow_pickle=False) as f:
            logits = f[f"logits_{key[1]}"][[x["row"] for x in images]] if f"logits_{key[1]}" in f else None
        if logits is None:
            return [{**x, "evaluated": None} for x in images]
        probs = softmax(method_logits(key[1], logits) / temperature)
        return [{**x, "evaluated": {"prediction": names[int(p.argmax())], "probability": float(p.max())}}
                for x, p in zip(images, probs)]

    def _read_samples(self, name: str) -> list[dict]:
        if self.run_dir is None:
            return []
        from ..run_folder import RunFolder
        from ..thumbnails import ThumbnailStore

        folder = RunFolder(self.run_dir).experiment(name)
        if not folder.test_samples.is_file():  # a folder from before samples were stored
            return []
        store = ThumbnailStore.open(folder.test_samples)
        row_of = {i: r for r, i in enumerate(folder.read_test_ids())}
        names = folder.read_serving()["class_names"]
        with np.load(folder.predictions, allow_pickle=False) as f:
            labels = f["labels"]
        return [{"id": i, "row": row_of[i], "label": names[int(labels[row_of[i]])], "image": store.get(i)[0]}
                for i in store.ids()]

    def samples_note(self, experiment: str | None = None) -> str | None:
        """Why an experiment offers no samples, where it offers none (None otherwise)."""
        if self.run_dir is None:
            return "served without a run folder: no test images to offer"
        from ..run_folder import RunFolder

        if not RunFolder(self.run_dir).experiment(experiment or self.default.experiment.name).test_samples.is_file():
            return "this run folder was written before ravis stored test images for the page: rerun it to get them"
        return None


__all__ = ["ServedModels"]
