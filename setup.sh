#!/usr/bin/env bash
# One-command set-up on a fresh machine: torch pinned first (no CUDA wheels), then the rest.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
$PY -m pip install --disable-pip-version-check -q torch==2.13.0
$PY -m pip install --disable-pip-version-check -q -r requirements.txt
if ! [ -x /usr/bin/chromium ]; then
  echo "note: the browser test needs Debian's chromium (sudo apt-get install -y chromium); it is skipped without it"
fi
echo "set-up done: try  python3 app.py  (the web demo)  or  python3 evaluate.py --task text2image --split test"
