"""A real long-tailed ImageFolder from the emoji packages: one folder per emoji subcategory
(99 classes, 3 to 777 images), each image linked from the npm packages `scripts/setup.sh`
fetched. For checking the methods on an ImageFolder whose memory is its training split:

    python benchmarks/emoji_imagefolder.py --out /tmp/emoji-if
    ravis run --dataset imagefolder:/tmp/emoji-if --class-depth 1 --seeds 0,1,2 --out runs/emoji-if
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from ravis.data.emoji import load_emoji
from ravis.io import link_or_copy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the folder to write (one subfolder per class)")
    ap.add_argument("--root", type=Path, default=None, help="the emoji packages' folder (default: ravis's)")
    args = ap.parse_args(argv)
    counts = collections.Counter()
    for e in load_emoji(args.root):
        subcategory = json.loads(e.meta)["subcategory"]
        link_or_copy(e.path, args.out / subcategory / f"{e.artist}-{Path(e.path).name}")
        counts[subcategory] += 1
    sizes = sorted(counts.values())
    print(f"{args.out}: {sum(sizes)} images in {len(sizes)} classes, {sizes[0]} to {sizes[-1]} per class")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
