#!/usr/bin/env bash
# Install, then run a real supervised CPU training with one injected crash (about 3 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m supervisor.demo "${1:-/tmp/nnunet-supervise-demo}"
