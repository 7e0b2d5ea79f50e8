#!/usr/bin/env bash
# One-command set-up on a fresh machine: torch pinned first (no CUDA wheels), then the rest.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
$PY -m pip install --disable-pip-version-check -q torch==2.13.0
$PY -m pip install --disable-pip-version-check -q -r requirements.txt
echo "set-up done: try  python3 evaluate.py --task text2image --split test"
