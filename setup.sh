#!/usr/bin/env bash
# One-command set-up: a virtual environment .venv/ in this checkout (the system's Python is left alone: Debian
# and Ubuntu refuse pip installs into it, PEP 668), then torch pinned first (no CUDA wheels), the runtime
# pins, the test tools, and this project (editable: the cir-* commands). Re-running reuses and updates .venv.
#   PYTHON=/path/to/python3 bash setup.sh     # the interpreter to build .venv from (default: python3)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
PIP_Q=(-q --disable-pip-version-check)

say() { printf '%s\n' "$*"; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }
have() { local p; p=$(command -v "$1" 2>/dev/null) && [ -x "$p" ]; }  # an executable command, not just a file

command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON=/path/to/python3)"
# version and installation of an interpreter: a venv's python reports its base installation, so running this
# script from an activated .venv is the same interpreter as the one that made it
ident='import sys; print("%d.%d.%d" % sys.version_info[:3], sys.base_prefix)'
want=$("$PY" -c "$ident") || die "'$PY' does not run"
read -r want_version _ <<<"$want"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Python >= 3.10 needed; '$PY' is $want_version"

# ----------------------------------------------------------------------------- the virtual environment
if [ -e "$VENV" ]; then
  if ! [ -f "$VENV/pyvenv.cfg" ]; then
    die "$VENV exists but is not a virtual environment; move it away and run again"
  fi
  if ! got=$("$VENV/bin/python" -c "$ident" 2>/dev/null); then
    say "$VENV does not run (was its Python removed?): making it again"
    rm -rf "$VENV"
  elif [ "$got" != "$want" ]; then
    read -r got_version _ <<<"$got"
    say "$VENV was made by another Python ($got_version at ${got#* }), not $PY ($want_version at ${want#* }): making it again"
    rm -rf "$VENV"
  fi
fi

venv_package() {  # the Debian/Ubuntu package that provides ensurepip for $PY
  local v; v=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if apt-cache show "python$v-venv" >/dev/null 2>&1; then echo "python$v-venv"; else echo python3-venv; fi
}

make_venv() {
  local out
  if out=$("$PY" -m venv "$VENV" 2>&1); then return 0; fi
  rm -rf "$VENV"  # a failed attempt leaves a venv without pip
  # Debian's own test (its venv prints "ensurepip is not available" and the apt command when it fails)
  if "$PY" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "ensurepip", "__main__.py")))' ||
     ! have apt-get; then
    printf '%s\n' "$out" >&2
    die "'$PY -m venv $VENV' failed (above)"
  fi
  return 2  # ensurepip is missing, and apt-get can install it
}

if ! [ -e "$VENV" ]; then
  say "making $VENV with $PY ($want_version)"
  rc=0; make_venv || rc=$?
  if [ "$rc" = 2 ]; then
    # Debian and Ubuntu ship ensurepip (which venv needs to put pip in .venv) in a package of its own
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif have sudo; then SUDO=sudo; else
      v=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
      die "$PY has no ensurepip, which venv needs. Install it as root, then run setup.sh again:
    apt-get update && apt-get install -y python$v-venv"
    fi
    say "$PY has no ensurepip: installing its venv package with apt-get"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    pkg=$(venv_package)
    say "  apt-get install -y $pkg"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 "$pkg" >/dev/null
    make_venv || die "'$PY -m venv $VENV' still fails after installing $pkg"
  fi
else
  say "reusing $VENV ($want_version)"
fi

# ----------------------------------------------------------------------------- packages, inside .venv only
VPY=$VENV/bin/python
# editable installs from pyproject.toml need pip >= 21.3 (Python 3.10's own pip may be older): upgrade only then
"$VPY" -c 'import sys
from pip import __version__ as v
sys.exit(tuple(int(p) for p in v.split(".")[:2]) < (21, 3))' ||
  "$VPY" -m pip install "${PIP_Q[@]}" --upgrade "pip>=21.3"
say "installing torch 2.13.0 (CPU), then requirements.txt and requirements-dev.txt, into $VENV"
"$VPY" -m pip install "${PIP_Q[@]}" torch==2.13.0
"$VPY" -m pip install "${PIP_Q[@]}" -r requirements.txt -r requirements-dev.txt
# this project itself, editable, dependencies already in: the cir package and the cir-* commands
"$VPY" -m pip install "${PIP_Q[@]}" --no-deps -e .

if ! [ -x /usr/bin/chromium ]; then
  say "note: the browser test needs Debian's chromium (sudo apt-get install -y chromium); it is skipped without it"
fi
cat <<EOF
set-up done. Next:
  $VENV/bin/python app.py            # the web demo
  $VENV/bin/python -m pytest -q      # the tests
(or \`source $VENV/bin/activate\` once, then \`python3 app.py\`, \`python3 -m pytest -q\`)
EOF
