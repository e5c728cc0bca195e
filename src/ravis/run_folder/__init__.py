"""The run folder: what ``ravis run`` writes and every other verb reads, one type for each
level, :class:`RunFolder` and :class:`ExperimentFolder`. No other module names its files.

    config.yaml                  the resolved config
    results.json, timings.json   the Table-1 numbers and details; where the time went
    <experiment>/                one folder per experiment (name with "/" -> "-")
        <method>.safetensors     trained weights (no pickle)
        <method>.encoder.safetensors   its fine-tuned encoder (train.finetune_encoder)
        predictions.npz          test logits per method, neighbours, similarities, attention
        test_ids.json            ids of the test images, in the rows of predictions.npz
        test_thumbnails.parquet  id -> small image of each test image (the report's gallery)
        test_samples.parquet     id -> a few test images at full resolution (the page's samples)
        shots.png, accuracy_vs_k.png
        memory/<part>/           memory parts made from the experiment's own dataset (and, with
                                 --copy-memory, copies of the memory folders it read), each in
                                 the one on-disk memory format (ravis.memory.sharded)
        serving.json             class names, k, index spec, each method's post-hoc logit
                                 adjustment, temperature and what validation kept, and
                                 the memory: every part's path and digest
        memory-edits.log         edits made after the run (ravis memory edit, ravis.memory.edit_log)
    report.html, report/*.png    written by ``ravis report`` (and by the demo)

    complete.json                written last: every output's size and sha256

A memory folder the run read (``ravis memory build`` / ``import``) is referred to by path
and manifest digest, not copied: :meth:`ExperimentFolder.open_memory` refuses one that has
gone or whose digest changed since training, naming it.

A folder is complete or refused: ``ravis run`` removes complete.json (and any temporary
file a killed writer left) before it writes anything (:meth:`RunFolder.begin`), and writes
it after everything else (:meth:`RunFolder.finish`). :meth:`RunFolder.open` is the one way in
for ``eval``, ``predict``, ``serve``, ``report`` and ``memory edit``: it refuses a folder
without the record, saying how to finish it, and :meth:`RunFolder.verify` checks each file a
verb reads against the sha256 the record holds.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

import yaml

from ..config import ExperimentConfig, RunConfig, read_yaml, resolve_file, to_dict
from ..errors import InputError
from ..io import atomic_path, exclusive_lock, load_json, save_json, sha256_file
from ._memory_parts import open_parts, save_part

FORMAT_VERSION = 2  # of serving.json


class RunFolderError(InputError):
    """A run folder that is incomplete, from another ravis version, or whose memory changed."""


class RunFolder:
    """A run folder (see the module doc): its files by name, and the ways in and out."""

    CONFIG, RESULTS, TIMINGS, COMPLETE, LOCK, REPORT = (
        "config.yaml", "results.json", "timings.json", "complete.json", ".lock", "report.html")
    # Not in the completion record: the record and the lock themselves, the memory parts
    # (their manifests hold their own checksums, checked when they are opened), the edit log
    # (edits come after the run), and what ``ravis report`` draws from the record's files.
    _UNRECORDED = {COMPLETE, LOCK, REPORT}
    _UNRECORDED_DIRS = {"memory", "report"}

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def timings(self) -> Path:
        return self.path / self.TIMINGS

    @property
    def report(self) -> Path:
        """Where ``ravis report`` writes by default (its figures in ``report/``)."""
        return self.path / self.REPORT

    def experiment(self, name: str) -> "ExperimentFolder":
        return ExperimentFolder(self, name)

    # -- writing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, busy: str) -> Iterator[None]:
        """One writer at a time; another is refused with FolderBusyError(``busy``)."""
        with exclusive_lock(self.path / self.LOCK, busy=busy):
            yield

    def begin(self) -> None:
        """Marks the folder incomplete before a run writes to it, and removes the temporary
        files killed writers left (the caller holds :meth:`locked`: nobody else writes)."""
        (self.path / self.COMPLETE).unlink(missing_ok=True)
        for tmp in self.path.rglob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink()

    def save_config(self, cfg: RunConfig) -> None:
        with atomic_path(self.config_file) as tmp:
            tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def save_results(self, results: dict) -> None:
        save_json(self.results, results)

    def save_timings(self, timings: dict) -> None:
        save_json(self.timings, timings)

    def finish(self) -> None:
        """Writes the completion record, last: the size and sha256 of every output file."""
        files = {p.relative_to(self.path).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in self._recorded_files()}
        from .. import __version__

        save_json(self.path / self.COMPLETE, {"format": 1, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "ravis": __version__, "files": files})

    def _recorded_files(self) -> list[Path]:
        out = []
        for path in sorted(self.path.rglob("*")):
            rel = path.relative_to(self.path)
            if (path.is_file() and rel.name not in self._UNRECORDED and not rel.name.endswith(".tmp")
                    and not rel.name.lstrip(".").startswith(ExperimentFolder.EDIT_LOG)
                    and not any(part in self._UNRECORDED_DIRS for part in rel.parts[:-1])):
                out.append(path)
        return out

    # -- reading -----------------------------------------------------------------------------
    def load_config(self) -> RunConfig:
        if not self.config_file.exists():
            raise FileNotFoundError(f"{self.path}: not a ravis run folder (no {self.CONFIG})")
        return resolve_file(self.config_file, read_yaml(self.config_file))

    def open(self) -> tuple[RunConfig, dict]:
        """(config, completion record) of a finished run folder, its config checked against
        the record; check the other files a verb reads with :meth:`verify`.

        Raises:
            FileNotFoundError: not a run folder.
            RunFolderError: the run did not finish, or its config changed since.
        """
        if not self.config_file.is_file():
            raise FileNotFoundError(f"{self.path}: not a ravis run folder (no {self.CONFIG})")
        record_path = self.path / self.COMPLETE
        if not record_path.is_file():
            raise RunFolderError(f"{self.path}: the run did not finish (no {self.COMPLETE}); run the "
                                 f"same `ravis run ... --out {self.path}` again to finish it (it resumes)")
        record = load_json(record_path)
        self.verify(record, [self.config_file])
        return self.load_config(), record

    def verify(self, record: dict, paths) -> None:
        """Checks the files ``paths`` (in this folder) against the sizes and sha256 the
        completion record holds; a missing, changed or unrecorded file is a RunFolderError."""
        files = record.get("files", {})
        for path in map(Path, paths):
            entry = files.get(path.relative_to(self.path).as_posix())
            if entry is None:
                raise RunFolderError(f"{path}: not written by the run that finished {self.path}; rerun it")
            if not path.is_file():
                raise RunFolderError(f"{path}: missing, the run wrote it; rerun `ravis run` to rewrite it")
            if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                raise RunFolderError(f"{path}: changed or damaged since the run finished (its sha256 "
                                     f"is not the {entry['sha256'][:16]}... the run recorded); rerun "
                                     "`ravis run` to rewrite it")

    def verify_all(self, record: dict) -> None:
        """:meth:`verify` of every file the record lists."""
        self.verify(record, [self.path / rel for rel in record["files"]])

    def read_results(self) -> dict:
        return load_json(self.results)

    def pick(self, cfg: RunConfig, name: str | None) -> tuple[ExperimentConfig, "ExperimentFolder"]:
        """The experiment ``name`` of the run (None: its first) and its folder, or an
        InputError listing the experiments."""
        names = [e.name for e in cfg.experiments]
        exp = next((e for e in cfg.experiments if e.name == (name or names[0])), None)
        if exp is None:
            raise InputError(f"{self.path}: no experiment {name!r}; it has {names}")
        return exp, self.experiment(exp.name)


class ExperimentFolder:
    """One experiment's folder of a run (see the module doc)."""

    SERVING, PREDICTIONS, TEST_IDS, TEST_THUMBNAILS, TEST_SAMPLES = (
        "serving.json", "predictions.npz", "test_ids.json", "test_thumbnails.parquet", "test_samples.parquet")
    SHOTS, ACCURACY_VS_K, MEMORY, EDIT_LOG = "shots.png", "accuracy_vs_k.png", "memory", "memory-edits.log"

    def __init__(self, run: RunFolder, name: str):
        self.run, self.name = run, name
        self.path = run.path / name.replace("/", "-")

    def __repr__(self) -> str:
        return f"ExperimentFolder({str(self.path)!r})"

    def weights(self, method: str) -> Path:
        return self.path / f"{method}.safetensors"

    def encoder_weights(self, method: str) -> Path:
        """The fine-tuned encoder of ``method`` (train.finetune_encoder)."""
        return self.path / f"{method}.encoder.safetensors"

    def has_servable_weights(self, method: str) -> bool:
        """Trained weights without a fine-tuned encoder beside them (not servable yet)."""
        return self.weights(method).is_file() and not self.encoder_weights(method).is_file()

    @property
    def predictions(self) -> Path:
        return self.path / self.PREDICTIONS

    @property
    def test_ids(self) -> Path:
        return self.path / self.TEST_IDS

    @property
    def test_thumbnails(self) -> Path:
        return self.path / self.TEST_THUMBNAILS

    @property
    def test_samples(self) -> Path:
        return self.path / self.TEST_SAMPLES

    @property
    def serving(self) -> Path:
        return self.path / self.SERVING

    @property
    def shots_plot(self) -> Path:
        return self.path / self.SHOTS

    @property
    def accuracy_vs_k_plot(self) -> Path:
        return self.path / self.ACCURACY_VS_K

    @property
    def edit_log(self) -> Path:
        return self.path / self.EDIT_LOG

    def compacted_part(self, seq: int) -> Path:
        """The memory part ``ravis memory compact`` writes after edit ``seq``."""
        return self.path / self.MEMORY / f"compacted-{seq:06d}"

    def read_test_ids(self) -> list[str]:
        return load_json(self.test_ids)

    # -- serving.json ------------------------------------------------------------------------
    def read_serving(self) -> dict:
        if not self.serving.is_file():
            raise FileNotFoundError(f"{self.serving}: missing; the experiment did not finish (rerun `ravis run`)")
        info = load_json(self.serving)
        if info.get("format") != FORMAT_VERSION:
            raise RunFolderError(f"{self.serving}: format {info.get('format')!r}, this ravis reads "
                                 f"{FORMAT_VERSION}; rerun the experiment to update the folder")
        return info

    def write_serving(self, info: dict) -> None:
        save_json(self.serving, {"format": FORMAT_VERSION, **info})

    # -- the memory --------------------------------------------------------------------------
    def save_memory_part(self, spec: str, memory, copy: bool, cache_dir: Path | None = None) -> dict:
        """Where serving finds one memory part: a memory made in RAM is saved under
        ``memory/<part>`` (with ``cache_dir``, saved once into the cache and hard-linked
        from there); a memory folder is referred to (or, with ``copy``, copied in). Returns
        the part's serving.json entry."""
        return save_part(self.path, self.path / self.MEMORY, spec, memory, copy, cache_dir, FORMAT_VERSION)

    def open_memory(self, info: dict | None = None):
        """The memory the experiment was trained with (a ComposedMemory), from serving.json
        (``info``: read already), every part checked against its checksums."""
        return open_parts(self.path, info if info is not None else self.read_serving())

    def open_edited_memory(self, info: dict | None = None):
        """:meth:`open_memory` with the edits of its log applied
        (:class:`ravis.memory.edited_view.EditedMemory`), skipping those a compaction already
        folded into it."""
        from ..memory.edited_view import EditedMemory

        info = info if info is not None else self.read_serving()
        return EditedMemory(self.open_memory(info), self.edit_log,
                            folded=info["memory"].get("edits_folded", 0),
                            base_class_counts=info["memory"].get("class_counts"))


__all__ = ["ExperimentFolder", "FORMAT_VERSION", "RunFolder", "RunFolderError"]
