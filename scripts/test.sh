#!/usr/bin/env bash
# Install (first time) and run the whole test suite: unit, integration (real Redis and RQ workers), and
# end-to-end against a real Label Studio 1.23.2 (installed into its own venv on first use).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not e2e".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} scripts/redis.sh
# The report test renders the page in a real headless browser (Debian's chromium), and the browser test drives
# Label Studio's UI through chromedriver (Debian's chromium-driver); best effort.
if ! { command -v chromium && command -v chromedriver; } >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "chromium not installed: the browser checks will skip" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -ra "$@"
