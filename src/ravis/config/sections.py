"""The config's sections: one typed dataclass per stage, validated on construction (a
conflict is a :class:`ConfigError` naming the field), and the recipes over them."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from ..methods import METHODS
from ..sizes import parse_bytes


class ConfigError(InputError):
    """A config that cannot run, with the field that is wrong."""


def _size(name: str, value) -> None:
    """A RAM budget ("16G", "512M") must be readable when the config is, not after embedding."""
    try:
        parse_bytes(value)
    except InputError as e:
        raise ConfigError(f"{name}: {e}") from None


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class MAMConfig:
    """Options of the fusion module :class:`ravis.fusion.MemoryAttention`: the ravis defaults
    (the "paper" recipe turns every option off, which is exactly Eq. 5-6, with L=8). Its
    classifier is configured by :class:`ClassifierConfig`, its training by :class:`TrainConfig`."""

    num_layers: int = 1  # L, stacked layers with their own parameters (the paper: 8)
    similarity_init: bool = True  # psiQ, psiK start as identities, chi at zero
    learn_temperature: bool = True  # learned score scale instead of 1/sqrt(d)
    init_temperature: float = 50.0  # its starting value (a sharp start: a kNN vote at k=10 beats k=100)
    similarity_bias: bool = False  # add a learned multiple of the retrieval similarity
    attn_dropout: float = 0.0  # dropout on attention weights
    qk_lr_scale: float = 0.01  # learning-rate multiplier for psiQ, psiK
    query_dropout: float = 0.0  # in training, drop a query's z term from the output with this probability

    def __post_init__(self):
        _check(self.num_layers >= 1, f"mam.num_layers must be >= 1, got {self.num_layers}")
        _check(0 <= self.attn_dropout < 1, f"mam.attn_dropout must be in [0, 1), got {self.attn_dropout}")
        _check(self.init_temperature > 0, "mam.init_temperature must be > 0")
        _check(self.qk_lr_scale >= 0, "mam.qk_lr_scale must be >= 0")
        _check(0 <= self.query_dropout < 1, "mam.query_dropout must be in [0, 1)")


@dataclass
class ClassifierConfig:
    """The classifier on the fused feature f of the methods whose registry entry names this
    section (:mod:`ravis.methods`: MAM); the other methods keep a plain linear head."""

    # it also reads the neighbours' labels where the memory's entries carry labels in the
    # experiment's classes: a learned kNN vote that it starts as (ravis.fusion.RetrievalClassifier)
    label_evidence: bool = True
    # that vote with each neighbour weighted by 1 / its class's count in the memory, so a
    # long-tailed memory's prior does not return through it (docs/method.md, "Label evidence")
    balance_votes: bool = True
    # it reads f through a hidden GELU layer, as the MLP baseline reads z (docs/method.md,
    # "Warm start"); off: the paper's linear classifier
    hidden_layer: bool = True


#: train.finetune_keys: what the memory keys are after fine-tuning the encoder.
FINETUNE_KEYS = ("reembed", "frozen")


@dataclass
class TrainConfig:
    """Optimisation of every trained method: the ravis defaults (see RECIPES["paper"])."""

    lr: float = 1e-2  # peak learning rate (AdamW); the paper's 1e-3 leaves a small set unlearned
    weight_decay: float = 0.2  # decoupled weight decay on weight matrices
    batch_size: int = 512
    epochs: int = 20
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to zero
    min_steps: int = 100  # stretch epochs so that small training sets still get this many steps
    label_smoothing: float = 0.1
    # LACE strength in training, or "auto": chosen on validation from tau_grid (a model per
    # value). One model at tau 1 is the default: a post-hoc tau of -1 puts back the prior that
    # LACE took out, so the post-hoc grid below covers what training at tau 0 would give
    # (docs/method.md, "Choosing on validation"), at half the training time.
    tau: float | str = "auto"
    tau_grid: list[float] = field(default_factory=lambda: [1.0])
    # logit adjustment at prediction, logits - posthoc_tau * log(prior), or "auto": chosen on
    # validation from posthoc_grid (no retraining: the validation logits are adjusted)
    posthoc_tau: float | str = "auto"
    posthoc_grid: list[float] = field(
        default_factory=lambda: [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0])
    memory_tau: float | str | None = None  # tau for methods that read the memory (None: tau)
    memory_posthoc_tau: float | str | None = None  # posthoc_tau for methods that read the memory (None: posthoc_tau)
    # validation score that picks the epoch, tau, posthoc tau and the vote's k: "balanced"
    # (mean per-class recall), "top1", or "auto": top1 where the test split is a stratified
    # split of the same collection as training (it is as skewed as training), else balanced
    select_on: str = "auto"
    val_fraction: float = 0.1  # > 0: a stratified validation split picks the epoch (and tau)
    # A trained model with label evidence replaces the untrained one (exactly the kNN vote)
    # only when it scores better on validation by more than this many standard errors of the
    # paired difference: the one-standard-error rule. 0: whichever scores higher.
    select_margin: float = 1.0
    patience: int = 0  # > 0: stop after this many epochs without validation improvement
    seed: int = 0
    # Seconds between training checkpoints (written at the end of an epoch, and while the
    # encoder is fine-tuned also after a step; 0: every epoch, or every fine-tuning step).
    # A MAM checkpoint holds weights, Adam's moments and the best weights (about 100 MB at
    # d 1280): written each of 50 short epochs it cost more than the training.
    checkpoint_every: float = 60.0
    # RAM for the memory rows a query set retrieved (read once); past it, every batch reads its
    # rows from the memory-mapped memory instead. Results are the same either way.
    memory_rows_budget: str = "4G"
    # Fine-tune the image encoder too ("Ours + FT"): after the fusion module and classifier
    # are trained on the frozen embeddings, all three train together for finetune_epochs
    # (ravis.training.finetune), the encoder at encoder_lr, the rest at finetune_lr.
    finetune_encoder: bool = False
    finetune_epochs: int = 3
    finetune_batch_size: int = 32
    # peak, below the head's so the pretrained features move little; chosen on Tux Paint's
    # validation splits from 1e-5 and 1e-4 (docs/method.md, "Fine-tuning the encoder")
    encoder_lr: float = 1e-4
    finetune_lr: float = 1e-3  # peak learning rate of the fusion module and classifier meanwhile
    # What the memory keys are after fine-tuning: "frozen" (the keys and neighbours of the
    # frozen encoder, as fine-tuning trained with; only the queries are embedded by the
    # fine-tuned one; any memory) or "reembed" (the memory's images embedded again with the
    # fine-tuned encoder and the neighbours retrieved again; memories made from the dataset).
    # docs/method.md, "Fine-tuning the encoder", has the measurements behind the default.
    finetune_keys: str = "frozen"
    # With label evidence (classifier.label_evidence): first train the classifier alone (the
    # vote's weight held at 0, the fusion module as initialised), then choose the vote's
    # weight on validation from vote_weight_grid, then train the whole model from there
    # (docs/method.md, "Warm start")
    warm_start: bool = True
    # (> 0: at 0 the model would not read its memory's labels, and could not predict a class
    # added to the memory after training)
    vote_weight_grid: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 2.0])
    # with label evidence, where the score is balanced accuracy and posthoc_tau is "auto":
    # false takes the post-hoc adjustment that LACE at tau leaves to do (1 - tau: none at tau
    # 1; the vote is balanced already), true chooses it on validation from posthoc_grid
    # (docs/method.md, "No post-hoc adjustment for the vote")
    tune_posthoc: bool = False

    def __post_init__(self):
        _check(len(self.vote_weight_grid) > 0 and all(w > 0 for w in self.vote_weight_grid),
               f"train.vote_weight_grid must be a non-empty list of weights > 0 (at 0 the model "
               f"would not read its memory's labels), got {self.vote_weight_grid}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")
        _size("train.memory_rows_budget", self.memory_rows_budget)
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check(self.epochs >= 1, "train.epochs must be >= 1")
        _check(0 <= self.warmup_epochs <= self.epochs, "train.warmup_epochs must be in [0, epochs]")
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing must be in [0, 1)")
        _check(0 <= self.val_fraction < 0.5, "train.val_fraction must be in [0, 0.5)")
        for name, grid in (("tau", "tau_grid"), ("memory_tau", "tau_grid"),
                           ("posthoc_tau", "posthoc_grid"), ("memory_posthoc_tau", "posthoc_grid")):
            value = getattr(self, name)
            if isinstance(value, str):
                _check(value == "auto", f"train.{name} must be a number or 'auto', got {value!r}")
                _check(self.val_fraction > 0, f"train.{name}='auto' needs train.val_fraction > 0")
                _check(len(getattr(self, grid)) > 0, f"train.{grid} is empty")
            elif value is not None and name in ("tau", "memory_tau"):
                _check(value >= 0, f"train.{name} must be >= 0, got {value}")
        _check(all(v >= 0 for v in self.tau_grid), "train.tau_grid must hold values >= 0")
        _check(self.select_on in ("auto", "balanced", "top1"),
               f"train.select_on must be auto, balanced or top1, got {self.select_on!r}")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0")
        _check(self.select_margin >= 0, f"train.select_margin must be >= 0, got {self.select_margin}")
        _check(self.patience == 0 or self.val_fraction > 0, "train.patience needs train.val_fraction > 0")
        _check(self.finetune_epochs >= 1, "train.finetune_epochs must be >= 1")
        _check(self.finetune_batch_size >= 1, "train.finetune_batch_size must be >= 1")
        _check(self.encoder_lr > 0 and self.finetune_lr > 0, "train.encoder_lr and train.finetune_lr must be > 0")
        _check(self.finetune_keys in FINETUNE_KEYS,
               f"train.finetune_keys must be one of {FINETUNE_KEYS}, got {self.finetune_keys!r}")

    def for_method(self, reads_memory: bool) -> tuple[float | str, float | str]:
        """(training tau, post-hoc tau) of a method: a memory that is balanced brings its own
        evidence for the tail classes, so memory methods may want less prior correction."""
        if not reads_memory:
            return self.tau, self.posthoc_tau
        tau = self.tau if self.memory_tau is None else self.memory_tau
        post = self.posthoc_tau if self.memory_posthoc_tau is None else self.memory_posthoc_tau
        return tau, post


@dataclass
class DataConfig:
    """Where the images come from and how they are split."""

    dataset: str = "fashion-mnist"  # a ravis.data.load_dataset spec: fashion-mnist, tuxpaint, imagefolder:PATH, lt-split:ROOT:TRAIN:TEST
    class_depth: int = 1  # folder level that names the class (imagefolder, tuxpaint)
    test_fraction: float = 0.2  # stratified test split for datasets that come without one
    split_seed: int = 0
    longtail: bool = False  # subsample the training split with an exponential profile
    imbalance_ratio: float = 100.0  # largest class / smallest class after subsampling
    max_per_class: int = 1000  # images kept in the largest class
    longtail_seed: int = 0
    limit_train: int | None = None  # keep at most this many training images (stratified; tiny runs)
    limit_test: int | None = None  # keep at most this many test images (stratified; tiny runs)
    # replace this fraction of the training labels with a wrong class (uniform over the others;
    # the paper's noisy WebVision at toy scale): the training queries and a "train" memory
    # carry the noisy labels, the test split and a "full-train" memory the clean ones
    label_noise: float = 0.0
    label_noise_seed: int = 0
    # leave this fraction of the classes (chosen with split_seed) out of training, the memory
    # and the test split: classes to teach the trained model later, by adding their images to
    # its memory (`ravis memory edit --add ... --label NEW`; benchmarks/study_new_classes.py)
    hold_out_fraction: float = 0.0

    def __post_init__(self):
        _check(bool(self.dataset), "data.dataset is empty")
        for name in ("split_seed", "longtail_seed", "label_noise_seed"):
            _check(getattr(self, name) >= 0, f"data.{name} must be >= 0, got {getattr(self, name)}")
        _check(0 <= self.hold_out_fraction < 1, "data.hold_out_fraction must be in [0, 1)")
        _check(self.class_depth >= 1, "data.class_depth must be >= 1")
        _check(0 < self.test_fraction < 1, "data.test_fraction must be in (0, 1)")
        _check(self.imbalance_ratio >= 1, "data.imbalance_ratio must be >= 1")
        _check(self.max_per_class >= 1, "data.max_per_class must be >= 1")
        _check(0 <= self.label_noise < 1, f"data.label_noise must be in [0, 1), got {self.label_noise}")


#: memory.values: what a memory entry's value embeds.
VALUE_KINDS = ("label_prompt", "caption", "image")


@dataclass
class MemoryConfig:
    """What the memory holds."""

    # "train": the (long-tailed) training split; "full-train": the whole training split; a saved
    # memory folder; a sharded memory (ravis memory build); or a list of these, concatenated
    # in order (the paper's "All" memory), each entry keeping its source name; "emoji": the
    # emoji of three npm packages (captions, no labels; ravis.memory.collections)
    source: str | list[str] = "train"
    values: str = "label_prompt"  # label_prompt | caption | image
    prompt: str = "a photo of a {label}"  # label prompt for images without a caption
    value_encoder: str | None = None  # image encoder spec for values="image"
    wrong_value_fraction: float = 0.0  # replace this fraction of values with a wrong class's prompt
    wrong_value_seed: int = 0

    @property
    def sources(self) -> list[str]:
        return list(self.source) if isinstance(self.source, (list, tuple)) else [self.source]

    def __post_init__(self):
        _check(bool(self.sources) and all(isinstance(x, str) and x for x in self.sources),
               f"memory.source must be a name/path or a non-empty list of them, got {self.source!r}")
        _check(len(set(self.sources)) == len(self.sources), f"memory.source lists an entry twice: {self.source!r}")
        _check(self.values in VALUE_KINDS, f"memory.values must be one of {VALUE_KINDS}, got {self.values!r}")
        _check("{label}" in self.prompt, "memory.prompt must contain '{label}'")
        try:
            self.prompt.format(label="x")
        except (ValueError, KeyError, IndexError) as e:
            raise ConfigError(f"memory.prompt {self.prompt!r} is not a format string with only "
                              f"{{label}} in it ({e!r}); write a literal brace as {{{{ or }}}}") from None
        _check(self.wrong_value_seed >= 0, f"memory.wrong_value_seed must be >= 0, got {self.wrong_value_seed}")
        _check(0 <= self.wrong_value_fraction < 1, "memory.wrong_value_fraction must be in [0, 1)")
        _check(self.wrong_value_fraction == 0 or self.values == "label_prompt",
               "memory.wrong_value_fraction needs memory.values=label_prompt")
        _check(self.values != "image" or bool(self.value_encoder),
               "memory.values=image needs memory.value_encoder")


@dataclass
class RetrievalConfig:
    """Neighbour search and the non-parametric reference."""

    k: int = 100  # neighbours per query
    # faiss-flat or exact (torch): exact search; auto (chosen for `budget`), faiss:<factory> or
    # scann: approximate, trained and tuned to `target_recall`@k on the memory, cached
    index: str = "faiss-flat"
    budget: str = "16G"  # RAM the index may use (index=auto)
    target_recall: float = 0.95  # recall@k an approximate index is tuned to
    vote_ks: list[int] = field(default_factory=lambda: [10, 20, 50, 100])  # kNN-vote k values; the best is reported
    vote_temperature: float = 0.07  # DINO's
    rac_texts: int = 10  # RAC-style: how many nearest neighbours' texts are concatenated
    k_curve: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50, 100])  # accuracy-versus-k plot
    # accuracy versus memory size: fractions of the memory the test queries also search (nested
    # random subsets; the trained models as they are), e.g. [0.05, 0.1, 0.25, 0.5]
    memory_curve: list[float] = field(default_factory=list)
    # Memory entries at or above this cosine similarity to a test (or, beyond its own entry, a
    # training) image are near-duplicates of it: counted in the results ("contamination") and,
    # unless exclude_duplicates is false, never retrieved for it.
    duplicate_threshold: float = 0.99
    exclude_duplicates: bool = True

    def __post_init__(self):
        _check(self.k >= 1, "retrieval.k must be >= 1")
        _size("retrieval.budget", self.budget)
        _check(0 < self.target_recall <= 1, "retrieval.target_recall must lie in (0, 1]")
        _check(all(1 <= v <= self.k for v in self.vote_ks), "retrieval.vote_ks must lie in [1, k]")
        _check(1 <= self.rac_texts <= self.k, "retrieval.rac_texts must lie in [1, k]")
        _check(all(1 <= v <= self.k for v in self.k_curve), "retrieval.k_curve must lie in [1, k]")
        _check(self.vote_temperature > 0, "retrieval.vote_temperature must be > 0")
        _check(0 < self.duplicate_threshold <= 1, "retrieval.duplicate_threshold must lie in (0, 1]")
        _check(all(0 < f < 1 for f in self.memory_curve), "retrieval.memory_curve: fractions in (0, 1)")


@dataclass
class ExperimentConfig:
    """One dataset + one memory, every method trained and evaluated on it."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mam: MAMConfig = field(default_factory=MAMConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    # Run once per seed (train.seed and data.split_seed both set to it) and report mean and
    # standard deviation; None: once, with train.seed. The run folder serves the first seed.
    seeds: list[int] | None = None
    # The query/key image encoder spec of this experiment; None: the run's ``encoder``
    # (filled in by RunConfig). Fashion-MNIST's 28 px images need no 224 px encoder.
    encoder: str | None = None

    def __post_init__(self):
        _check(bool(self.name), "experiment name is empty")
        _check(self.seeds is None or (len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds)),
               f"{self.name}: seeds must be a non-empty list without repeats, got {self.seeds}")
        _check(self.seeds is None or all(s >= 0 for s in self.seeds), f"{self.name}: seeds must be >= 0, got {self.seeds}")
        unknown = sorted(set(self.methods) - set(METHODS))
        _check(not unknown, f"{self.name}: unknown methods {unknown}; choose from {list(METHODS)}")
        if self.train.finetune_encoder and self.train.finetune_keys == "reembed":
            others = [s for s in self.memory.sources if s not in ("train", "full-train")]
            _check(not others, f"{self.name}: train.finetune_keys=reembed embeds the memory's images "
                               f"again, which ravis has only for the parts train and full-train, not "
                               f"{others}; use train.finetune_keys=frozen")


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def is_device_spec(spec: str) -> bool:
    """Whether ``spec`` names a device in the grammar ``--device`` takes (without torch: the
    config is checked before anything heavy is imported; :mod:`ravis.device` resolves it)."""
    kind, colon, index = spec.partition(":")
    return spec in ("auto", "cpu", "cuda") or (kind == "cuda" and bool(colon) and index.isdigit())


@dataclass
class RunConfig:
    """A whole run: encoders shared by its experiments."""

    encoder: str = "efficientnet_lite0"  # query/key image encoder spec
    text_encoder: str = "minilm"  # value text encoder spec
    strict: bool = False  # a bad image is an error instead of a skipped, counted item
    recipe: str = "ravis"  # "ravis" (the dataclass defaults) or "paper" (the paper's settings)
    experiments: list[ExperimentConfig] = field(default_factory=list)
    # where the torch encoders, fusion training and evaluation and exact k-NN run: auto (the
    # first GPU where there is one, else the CPU), cpu, cuda or cuda:N (ravis.device)
    device: str = "auto"

    def __post_init__(self):
        _check(self.recipe in RECIPES, f"recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        _check(is_device_spec(self.device), f"device must be {DEVICE_CHOICES}, got {self.device!r}")
        names = [e.name for e in self.experiments]
        _check(len(names) == len(set(names)), f"experiment names repeat: {names}")
        for e in self.experiments:
            e.encoder = e.encoder or self.encoder



#: The stored dtypes of a memory's keys and values.
MEMORY_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class MemoryBuildConfig:
    """How ``ravis memory build`` makes a sharded memory: what every shard is built with
    (pickled to Ray workers), and how folder sources are cut into input shards."""

    image_encoder: str = RunConfig.encoder  # image encoder spec (keys)
    text_encoder: str = RunConfig.text_encoder  # text encoder spec (values)
    dtype: str = "float16"  # stored dtype of keys and values
    thumbnails: bool = True  # store a 64 px thumbnail per row in the metadata (JPEG; PNG up to 32 px)
    strict: bool = False  # any skipped row, empty or unreadable shard is an error
    batch_size: int = 64  # images per encoder call (fixed: batches are part of the result)
    num_threads: int | None = None  # onnxruntime threads per encoder (None: all cores)
    decode_workers: int = 2  # threads decoding, resizing, thumbnailing ahead of the encoders
    env: tuple = ()  # (name, value) pairs set in a worker before encoders load
    # rows per input shard of a folder source (a tar or parquet file is one input shard): a
    # resumed build redoes at most this many
    rows_per_shard: int = 10000

    def __post_init__(self):
        _check(self.dtype in MEMORY_DTYPES, f"dtype must be one of {MEMORY_DTYPES}, got {self.dtype!r}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.rows_per_shard >= 1, f"rows_per_shard must be >= 1, got {self.rows_per_shard}")


#: Training recipes applied under a preset's own settings. "ravis" is the dataclass defaults;
#: "paper" is Iscen et al.'s recipe as published, kept for comparison.
RECIPES: dict[str, dict] = {
    "ravis": {},
    "paper": {
        "train": {"lr": 1e-3, "weight_decay": 0.2, "batch_size": 512, "epochs": 10,
                  "warmup_epochs": 1.0, "min_steps": 0, "label_smoothing": 0.1, "tau": 1.0,
                  "posthoc_tau": 0.0, "memory_tau": None, "memory_posthoc_tau": None,
                  "val_fraction": 0.0, "patience": 0, "warm_start": False},
        "mam": {"num_layers": 8, "similarity_init": False, "learn_temperature": False,
                "similarity_bias": False, "attn_dropout": 0.0, "qk_lr_scale": 1.0,
                "query_dropout": 0.0},
        "classifier": {"label_evidence": False, "balance_votes": False, "hidden_layer": False},
        "retrieval": {"k": 100},
    },
}
