#!/usr/bin/env bash
# Make Abliterix 1.12.2's own virtualenv (AGPL-3.0: only installed and run) and print its python.
#
#   bash bench/abliterix_setup.sh            # venv at /tmp/abliterix-venv
#   ABLITERIX_VENV=DIR bash bench/abliterix_setup.sh
#
# Abliterix needs optuna < 5 (the project runs optuna 5), hence a venv of its own; its
# dependencies (accelerate, peft, bitsandbytes, kernels) install under bench/peer_venv.sh's torch pin.
set -euo pipefail
exec bash "$(dirname "$0")/peer_venv.sh" abliterix 1.12.2 "${ABLITERIX_VENV:-/tmp/abliterix-venv}"
