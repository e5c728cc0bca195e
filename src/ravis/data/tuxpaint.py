"""The Tux Paint stamps: about 800 clip-art PNGs, each with a one-line English caption.

The Debian package ``tuxpaint-stamps-default`` installs them under
``/usr/share/tuxpaint/stamps/<category>/<subcategory>/<name>.png`` with ``<name>.txt``
beside each (first line: the English caption, e.g. "A frog."; then translations). The
category tree gives about 73 long-tailed classes at depth 2, which makes a small real
long-tail benchmark with captions. The PNGs are RGBA; :func:`~ravis.data.images.open_image`
flattens them on white.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import InputError
from .dataset import ImageDataset, MissingDataError
from .imagefolder import build_dataset, check_class_depth, find_files, read_caption

DEFAULT_ROOT = "/usr/share/tuxpaint/stamps"
DEBIAN_PACKAGE = "tuxpaint-stamps-default"


def load_tuxpaint(root: Path | str = DEFAULT_ROOT, class_depth: int = 2) -> ImageDataset:
    """Every stamp PNG that has a caption sidecar, labelled by its category folder.

    The ``*_mirror.png`` variants (and any other PNG without a ``.txt``) are skipped: they
    are alternative renderings of a captioned stamp, not items of their own.

    Args:
        root: the stamps folder.
        class_depth: how many folder levels name the class ("animals/amphibians" at 2); a
            stamp sitting higher (``sports/soccer.png``) is labelled by its deepest folder.

    Returns:
        One unsplit dataset; ids are paths relative to ``root``, captions the first line of
        each sidecar. The fingerprint hashes the paths and the bytes of every PNG and .txt.

    Raises:
        MissingDataError: ``root`` is missing or holds no captioned stamps.
    """
    check_class_depth(class_depth)
    root = Path(root)
    hint = (f"install the Debian package {DEBIAN_PACKAGE} "
            f"(apt-get install --no-install-recommends {DEBIAN_PACKAGE}) or pass the stamps folder")
    if not root.is_dir():
        raise MissingDataError(f"{root}: Tux Paint stamps not found; {hint}")
    rels = [r for r in find_files(root, (".png",)) if (root / r).with_suffix(".txt").is_file()]
    if not rels:
        raise MissingDataError(f"{root}: no stamp PNG with a .txt caption found; {hint}")
    loose = [r for r in rels if len(PurePosixPath(r).parts) == 1]
    if loose:
        raise InputError(f"{root}: stamps directly in the root folder have no category: "
                         f"{', '.join(loose[:10])}")
    return build_dataset(root, rels, class_depth, name="tuxpaint",
                         caption_of=lambda p: read_caption(p, first_non_empty=False))
