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
if [ -n "$extras" ] && [ ! -x /usr/bin/chromium ]; then
  # tests/server/test_web_page.py drives Debian's chromium (never `playwright install`)
  note="note: the browser tests need Debian's chromium (as root: apt-get install chromium)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
      || echo "$note" >&2
  else
    echo "$note" >&2
  fi
fi
echo "pocketlm installed: .venv/bin/pocketlm"
