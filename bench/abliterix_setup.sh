#!/usr/bin/env bash
# Make Abliterix 1.12.2's own virtualenv (AGPL-3.0: only installed and run) and print its python.
#
#   bash bench/abliterix_setup.sh            # venv at /tmp/abliterix-venv
#   ABLITERIX_VENV=DIR bash bench/abliterix_setup.sh
#
# Idempotent: a venv whose abliterix is already 1.12.2 on torch 2.13.0 is left as it is.
# Abliterix needs optuna < 5 (the project runs optuna 5), hence a venv of its own. torch 2.13.0
# is the CPU wheel on this machine's disk; every install here runs under a constraints file
# pinning it, so no dependency of abliterix (accelerate, peft, bitsandbytes, kernels) can pull
# another torch (gigabytes of CUDA wheels).
set -euo pipefail

VENV="${ABLITERIX_VENV:-/tmp/abliterix-venv}"
PY="$VENV/bin/python"
TORCH="2.13.0"
ABLITERIX="1.12.2"

installed() {  # true when the venv already holds both pinned versions
    [[ -x "$PY" ]] && "$PY" - "$TORCH" "$ABLITERIX" <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
torch, abliterix = sys.argv[1:]
ok = md.version("torch").split("+")[0] == torch and md.version("abliterix") == abliterix
sys.exit(0 if ok else 1)
EOF
}

if ! installed; then
    [[ -x "$PY" ]] || python3 -m venv "$VENV"
    CONSTRAINTS="$VENV/abliterix-constraints.txt"
    echo "torch==$TORCH" > "$CONSTRAINTS"
    "$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" "torch==$TORCH"
    "$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" "abliterix==$ABLITERIX"
    installed || { echo "error: $VENV lacks torch==$TORCH or abliterix==$ABLITERIX after install" >&2; exit 1; }
fi
echo "$PY"
