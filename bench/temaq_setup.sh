#!/usr/bin/env bash
# Make temaq-abliterated 1.1.1's own virtualenv (MIT: only installed and run) and print its python.
#
#   bash bench/temaq_setup.sh            # venv at /tmp/temaq-venv
#   TEMAQ_VENV=DIR bash bench/temaq_setup.sh
#
# Idempotent: a venv whose temaq-abliterated is already 1.1.1 on torch 2.13.0 is left as it is.
# A venv of its own keeps temaq's dependencies (its transformers, matplotlib, psutil) apart from
# the project's. torch 2.13.0 is the CPU wheel on this machine's disk; every install here runs
# under a constraints file pinning it, so no dependency of temaq can pull another torch
# (gigabytes of CUDA wheels).
set -euo pipefail

VENV="${TEMAQ_VENV:-/tmp/temaq-venv}"
PY="$VENV/bin/python"
TORCH="2.13.0"
TEMAQ="1.1.1"

installed() {  # true when the venv already holds both pinned versions
    [[ -x "$PY" ]] && "$PY" - "$TORCH" "$TEMAQ" <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
torch, temaq = sys.argv[1:]
ok = md.version("torch").split("+")[0] == torch and md.version("temaq-abliterated") == temaq
sys.exit(0 if ok else 1)
PYEOF
}

if ! installed; then
    [[ -x "$PY" ]] || python3 -m venv "$VENV"
    CONSTRAINTS="$VENV/temaq-constraints.txt"
    echo "torch==$TORCH" > "$CONSTRAINTS"
    "$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" "torch==$TORCH"
    "$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" "temaq-abliterated==$TEMAQ"
    installed || { echo "error: $VENV lacks torch==$TORCH or temaq-abliterated==$TEMAQ after install" >&2; exit 1; }
fi
echo "$PY"
