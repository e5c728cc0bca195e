"""The emoji image-text collection: about 1,900 emoji drawn by three artists, with their names.

The npm packages ``emoji-datasource-google``, ``-twitter`` and ``-apple`` (iamcal's
emoji-data) each hold ``emoji.json`` (one entry per emoji: name, short names, category,
the image's file name) and the artist's PNGs. ``scripts/setup.sh`` fetches them with
``npm pack`` and unpacks, per package, only what is read here::

    ROOT/emoji-datasource-google/package.json       (its version)
    ROOT/emoji-datasource-google/emoji.json
    ROOT/emoji-datasource-google/img/google/64/1f600.png ...

ROOT is ``$RAVIS_DATA/emoji`` (default ``~/.local/share/ravis/emoji``). The 64 px PNGs are
the only bitmap size the packages ship besides sprite sheets; they are RGBA, and
:func:`~ravis.data.images.open_image` flattens them on white.

These images carry none of a downstream task's labels: they make an external memory, the
toy-scale counterpart of the paper's web image-text memory. Skin-tone variants are left
out (one image per emoji and artist). The image licences are the artists' (see each
package's README.md: Apple's images are not licensed for commercial use).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io import default_data_dir
from .dataset import MissingDataError

ARTISTS = ("google", "twitter", "apple")
IMAGE_SIZE = 64  # img/<artist>/64/: the one PNG size the packages ship


@dataclass(frozen=True)
class EmojiImage:
    """One emoji as one artist drew it."""

    key: str  # "emoji/<artist>/<unified, lower case>": unique over the collection
    path: str  # the PNG
    caption: str  # the emoji's name in lower case, e.g. "grinning face"
    artist: str
    package: str  # "emoji-datasource-<artist>@<version>"
    meta: str  # JSON: name, short_names, category, subcategory, unified, artist, package


def default_root() -> Path:
    return default_data_dir() / "emoji"


def package_name(artist: str) -> str:
    return f"emoji-datasource-{artist}"


def package_versions(root: Path | str | None = None, artists=ARTISTS) -> dict[str, str]:
    """{artist: version} from each package's package.json.

    Raises:
        MissingDataError: a package folder or its package.json is missing, naming the package.
    """
    root = Path(root) if root is not None else default_root()
    return {a: _version(root, a) for a in artists}


def load_emoji(root: Path | str | None = None, artists=ARTISTS) -> list[EmojiImage]:
    """Every emoji whose PNG is in its artist's folder, artist by artist in ``artists``
    order, each in emoji.json's order.

    Raises:
        MissingDataError: a package, its emoji.json or its image folder is missing; the
            message names the npm package and says to run scripts/setup.sh.
        ValueError: emoji.json is not a list of entries with name, image and unified, or
            repeats an emoji; the message names the file and the entry.
    """
    root = Path(root) if root is not None else default_root()
    out: list[EmojiImage] = []
    for artist in artists:
        out += _load_artist(root, artist)
    return out


def caption_of(entry: dict) -> str:
    """The name as a web caption would read it: "GRINNING FACE" -> "grinning face",
    "Colombia Flag" -> "colombia flag". The short names ("grinning", "flag-co") are
    abbreviations, so they serve only where an entry has no name."""
    name = entry.get("name") or " ".join((entry.get("short_names") or [""])[0].split("_"))
    return " ".join(name.split()).lower()


def _load_artist(root: Path, artist: str) -> list[EmojiImage]:
    folder = root / package_name(artist)
    package = f"{package_name(artist)}@{_version(root, artist)}"
    entries = _entries(folder / "emoji.json", root, artist)
    images = folder / "img" / artist / str(IMAGE_SIZE)
    if not images.is_dir():
        raise _missing(root, artist, images)
    present = {p.name for p in images.iterdir()}
    out, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{folder / 'emoji.json'}: entry {i}"
        if entry["image"] not in present:  # not drawn by this artist (3 of Apple's)
            continue
        unified = entry["unified"].lower()
        if unified in seen:
            raise InputError(f"{where}: emoji {entry['unified']} is listed twice")
        seen.add(unified)
        caption = caption_of(entry)
        if not caption:
            raise InputError(f"{where}: emoji {entry['unified']} has neither name nor short name")
        meta = {"name": entry["name"], "short_names": entry.get("short_names") or [],
                "category": entry.get("category"), "subcategory": entry.get("subcategory"),
                "unified": entry["unified"], "artist": artist, "package": package}
        out.append(EmojiImage(f"emoji/{artist}/{unified}", str(images / entry["image"]),
                              caption, artist, package,
                              json.dumps(meta, sort_keys=True, ensure_ascii=False)))
    return out


def _entries(path: Path, root: Path, artist: str) -> list[dict]:
    if not path.is_file():
        raise _missing(root, artist, path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); run scripts/setup.sh again "
                         f"after removing {path.parent}") from e
    if not isinstance(entries, list):
        raise InputError(f"{path}: expected a list of emoji entries, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict)
                and all(isinstance(entry.get(f), str) for f in ("name", "image", "unified"))):
            raise InputError(f"{path}: entry {i} lacks a string name, image or unified field")
    return entries


def _version(root: Path, artist: str) -> str:
    path = root / package_name(artist) / "package.json"
    if not path.is_file():
        raise _missing(root, artist, path)
    try:
        version = json.loads(path.read_text(encoding="utf-8")).get("version")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise InputError(f"{path}: not a readable package.json ({e})") from e
    if not isinstance(version, str) or not version:
        raise InputError(f"{path}: no version")
    return version


def _missing(root: Path, artist: str, path: Path) -> MissingDataError:
    """The error for a missing file or folder of a package: the package folder itself when
    that is what is missing."""
    folder = root / package_name(artist)
    state = "incomplete" if folder.is_dir() else "missing"
    return MissingDataError(
        f"{path if folder.is_dir() else folder} is missing: the npm package "
        f"{package_name(artist)} is {state} in {root}; run scripts/setup.sh (it fetches the "
        "emoji packages with npm pack), or point RAVIS_DATA or emoji:ROOT at a folder "
        "holding them")
