#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that Mercator loads at run time (ort's load-dynamic), taken from
# PyPI's onnxruntime wheel, into .runtime/lib/libonnxruntime.so. The version must match the `api-31` feature
# of the `ort` crate in Cargo.toml. Idempotent: does nothing when the right version is already there.
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.runtime/lib"
stamp="$dest/.onnxruntime-$ORT_VERSION"
if [ -f "$stamp" ] && [ -f "$dest/libonnxruntime.so" ]; then
  exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "installing libonnxruntime $ORT_VERSION from PyPI's onnxruntime wheel into $dest"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "onnxruntime==$ORT_VERSION"
python3 - "$tmp" "$dest" "$ORT_VERSION" <<'PY'
import glob, os, sys, zipfile
tmp, dest, version = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "onnxruntime-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = f"onnxruntime/capi/libonnxruntime.so.{version}"
    with z.open(name) as src, open(os.path.join(dest, "libonnxruntime.so"), "wb") as out:
        out.write(src.read())
PY
rm -f "$dest"/.onnxruntime-*
touch "$stamp"
