#!/usr/bin/env bash
# Make temaq-abliterated 1.1.1's own virtualenv (MIT: only installed and run) and print its python.
#
#   bash bench/temaq_setup.sh            # venv at /tmp/temaq-venv
#   TEMAQ_VENV=DIR bash bench/temaq_setup.sh
#
# A venv of its own keeps temaq's dependencies (its transformers, matplotlib, psutil) apart from
# the project's.
set -euo pipefail
exec bash "$(dirname "$0")/peer_venv.sh" temaq-abliterated 1.1.1 "${TEMAQ_VENV:-/tmp/temaq-venv}"
