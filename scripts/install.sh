#!/usr/bin/env bash
# Install pocketlm into .venv (created if missing), with a llama.cpp engine built for this CPU.
#   scripts/install.sh          the runtime
#   scripts/install.sh --dev    the runtime and the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: pocketlm needs Python >= 3.11 ($PY is $("$PY" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=24.1"
.venv/bin/python scripts/install_engine.py --python .venv/bin/python
.venv/bin/python -m pip install --quiet -e ".$extras"
echo "pocketlm installed: .venv/bin/pocketlm"
