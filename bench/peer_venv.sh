#!/usr/bin/env bash
# Make a peer tool's own virtualenv and print its python: the package at its pinned version on
# torch 2.13.0 (the CPU wheel on this machine's disk). Every install runs under a constraints file
# pinning torch, so no dependency of the peer can pull another torch (gigabytes of CUDA wheels).
# Idempotent: a venv that already holds both pinned versions is left as it is.
#
#   bash bench/peer_venv.sh DISTRIBUTION VERSION VENV      (bench/abliterix_setup.sh, bench/temaq_setup.sh)
set -euo pipefail

DIST="$1"
VERSION="$2"
VENV="$3"
PY="$VENV/bin/python"
TORCH="2.13.0"

installed() {  # true when the venv already holds both pinned versions
    [[ -x "$PY" ]] && "$PY" - "$TORCH" "$DIST" "$VERSION" <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
torch, dist, version = sys.argv[1:]
ok = md.version("torch").split("+")[0] == torch and md.version(dist) == version
sys.exit(0 if ok else 1)
EOF
}

if ! installed; then
    [[ -x "$PY" ]] || python3 -m venv "$VENV"
    CONSTRAINTS="$VENV/$DIST-constraints.txt"
    echo "torch==$TORCH" > "$CONSTRAINTS"
    "$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" "torch==$TORCH"
    "$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" "$DIST==$VERSION"
    installed || { echo "error: $VENV lacks torch==$TORCH or $DIST==$VERSION after install" >&2; exit 1; }
fi
echo "$PY"
