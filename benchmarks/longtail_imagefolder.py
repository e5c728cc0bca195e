"""A long-tailed ImageFolder shaped like issue 9's: 20 classes, from 3 to 2,000 images each.

Ten classes are Fashion-MNIST's (training images, written as PNG) and ten are the largest
emoji subcategories (their PNGs linked from the npm packages `scripts/setup.sh` fetched).
Class sizes fall geometrically from 2,000 to 3; the two sources take turns along the ranks
so that both have head and tail classes (an emoji subcategory with fewer images than its
rank asks for keeps all it has). Which images a class gets is drawn with ``--seed``. For
checking the methods where a class of 3 images sits next to one of 2,000, with the test
split as skewed as training (``ravis run`` splits an ImageFolder 80/20, stratified):

    python benchmarks/longtail_imagefolder.py --out /tmp/lt-if
    ravis run --dataset imagefolder:/tmp/lt-if --class-depth 1 --seeds 0,1,2 --out runs/lt-if
    python benchmarks/longtail_imagefolder.py --summarise runs/lt-if \
        --out benchmarks/results/longtail-imagefolder.json
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ravis.data.emoji import load_emoji
from ravis.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from ravis.io import link_or_copy

CLASSES, LARGEST, SMALLEST = 20, 2000, 3
# Ranks (0 = largest) that go to emoji subcategories: the largest holds 777 images, so the
# first emoji rank is the first whose size fits it; Fashion-MNIST takes the rest.
EMOJI_RANKS = (3, 5, 7, 9, 11, 13, 15, 17, 18, 19)


def class_sizes() -> list[int]:
    """The 20 sizes, largest first: 2000 * (3 / 2000) ** (rank / 19), rounded."""
    ratio = (SMALLEST / LARGEST) ** (1 / (CLASSES - 1))
    return [round(LARGEST * ratio ** r) for r in range(CLASSES)]


def summarise(run: Path, out: Path) -> None:
    """Writes ``out``: per method, top-1 and balanced accuracy (percent) per seed and their mean
    and standard deviation, from the run folder's results.json; and what MAM kept per seed."""
    exp = json.loads((run / "results.json").read_text())["experiments"][0]
    pct = lambda x: round(100 * x, 2)  # noqa: E731
    summary = {
        "classes": len(exp["class_names"]), "class_counts": exp["class_counts"],
        "num_train": exp["num_train"], "num_test": exp["num_test"],
        # the split is stratified, so this is also (to rounding) the majority guess's test top-1
        "largest_class_share_of_training": pct(max(exp["class_counts"]) / sum(exp["class_counts"])),
        "methods": {m: {metric: {"mean": pct(v[metric]), "std": pct(exp["std"][m][metric]),
                                 "per_seed": [pct(s["methods"][m][metric]) for s in exp["seeds"]]}
                        for metric in ("top1", "balanced")}
                    for m, v in exp["methods"].items()},
        "mam_kept_per_seed": [s["details"]["mam"]["kept"] for s in exp["seeds"]],
    }
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["methods"], indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True,
                    help="the folder to write (one subfolder per class); with --summarise, the JSON file")
    ap.add_argument("--summarise", type=Path, default=None, metavar="RUN",
                    help="instead: summarise the ravis run folder RUN into --out")
    ap.add_argument("--fashion-mnist", type=Path, default=Path(DEFAULT_ROOT))
    ap.add_argument("--emoji", type=Path, default=None, help="the emoji packages' folder (default: ravis's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.summarise is not None:
        summarise(args.summarise, args.out)
        return 0
    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"{args.out} is not empty")
    rng = np.random.default_rng(args.seed)
    sizes = class_sizes()
    emoji_sizes = [sizes[r] for r in EMOJI_RANKS]
    fmnist_sizes = [s for r, s in enumerate(sizes) if r not in EMOJI_RANKS]

    train = load_fashion_mnist(args.fashion_mnist).train
    names = list(train.class_names)
    for name, size in zip(rng.permutation(names), fmnist_sizes):
        rows = rng.choice(np.flatnonzero(train.labels == names.index(name)), size, replace=False)
        folder = args.out / f"fashion-{name.lower().replace('/', '-').replace(' ', '-')}"
        folder.mkdir(parents=True)
        for i in sorted(rows):
            train.loader(int(i)).save(folder / f"{i:05d}.png")

    by_subcategory = collections.defaultdict(list)
    for e in load_emoji(args.emoji):
        by_subcategory[json.loads(e.meta)["subcategory"]].append(e)
    largest = sorted(by_subcategory, key=lambda s: (-len(by_subcategory[s]), s))[:len(emoji_sizes)]
    for subcategory, size in zip(largest, emoji_sizes):
        items = by_subcategory[subcategory]
        for j in sorted(rng.choice(len(items), min(size, len(items)), replace=False)):
            e = items[j]
            link_or_copy(e.path, args.out / f"emoji-{subcategory}" / f"{e.artist}-{Path(e.path).name}")

    counts = sorted((len(list(d.iterdir())), d.name) for d in args.out.iterdir())
    print(f"{args.out}: {sum(c for c, _ in counts)} images in {len(counts)} classes: "
          + ", ".join(f"{n} {c}" for c, n in reversed(counts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
