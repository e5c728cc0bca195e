"""The methods ravis compares, each declared once.

An entry says how to build the method (its fusion module from :func:`ravis.fusion.
register_fusion`'s registry, configured by which config section; its classifier's section),
how the results name it, whether it reads the memory and which parts of it per
neighbour, whether it trains, and what extra per-query input it takes. Every other module
asks the registry instead of testing method names.

    >>> from ravis.methods import METHODS, method
    >>> method("mam").reads, method("knn_vote").trains
    (('keys', 'values', 'labels'), False)

Nothing here imports torch: the config validates method names against this table, and the
fusion modules are named, then imported when a model is built. :func:`register_method` adds
one (before a config naming it is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # how tables, the report and the page name it
    # The registered fusion module that builds it (ravis.fusion.FUSIONS; None: nothing to
    # train, the kNN vote).
    fusion: str | None
    # What it reads of each retrieved neighbour: "keys", "values", "labels" (memory labels in
    # the experiment's classes; only where the config section turns it on). () = no memory.
    reads: tuple[str, ...]
    # The config section (a field of ExperimentConfig) whose options build the fusion module.
    options: str | None = None
    # The config section of its classifier (ClassifierConfig: label evidence, hidden layer);
    # None: a plain linear head.
    classifier: str | None = None
    # An input computed per query before training, in place of per-neighbour values:
    # "texts" = one embedding of the nearest neighbours' texts joined (RAC).
    extra: str | None = None
    # Whether it gives per-neighbour weights that explain a prediction (the attention).
    attends: bool = False

    @property
    def trains(self) -> bool:
        return self.fusion is not None

    @property
    def reads_memory(self) -> bool:
        return bool(self.reads)

    def reads_labels(self, exp) -> bool:
        """Whether it reads its neighbours' labels in experiment config ``exp``: a method
        with a classifier section reads them only where its ``label_evidence`` says so."""
        if "labels" not in self.reads:
            return False
        return self.classifier is None or getattr(exp, self.classifier).label_evidence

    @property
    def servable(self) -> bool:
        """Whether ``ravis predict`` / ``serve`` can run it on a new image: a trained model
        whose inputs are the neighbours themselves (RAC's joined texts are not)."""
        return self.trains and self.extra is None


METHODS: dict[str, Method] = {}

#: The method ``ravis predict`` and ``ravis serve`` use unless told.
DEFAULT_SERVED = "mam"


def register_method(entry: Method) -> Method:
    """Adds ``entry`` to :data:`METHODS` (its fusion module registered with
    :func:`ravis.fusion.register_fusion`); a name taken by another entry is refused."""
    if METHODS.get(entry.name, entry) != entry:
        raise InputError(f"method {entry.name!r} is already registered as {METHODS[entry.name]}")
    METHODS[entry.name] = entry
    return entry


for _entry in (
    Method("linear", "Linear (no memory)", "no_memory", ()),
    Method("mlp", "MLP (no memory)", "mlp", ()),
    Method("mean_knn", "Mean kNN", "mean_knn", ("values",)),
    Method("mam", "MAM (memory attention)", "memory_attention", ("keys", "values", "labels"),
           options="mam", classifier="classifier", attends=True),
    Method("rac", "RAC-style", "rac", ("values",), extra="texts"),
    Method("knn_vote", "kNN vote", None, ("labels",)),
):
    register_method(_entry)


def method(name: str) -> Method:
    """The registry entry of ``name``; a clear error for an unknown one."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose from {list(METHODS)}")
    return METHODS[name]
