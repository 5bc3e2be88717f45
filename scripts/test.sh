#!/usr/bin/env bash
# Install, then lint, type-check and run the whole test suite (unit + real nnU-Net integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/system-deps.sh
.venv/bin/ruff check supervisor tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q --durations=25 "$@"
