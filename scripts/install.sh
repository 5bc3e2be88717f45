#!/usr/bin/env bash
# Create .venv (if missing) and install nnunet-supervise with nnU-Net v2 and the test tools into it.
# pip's own chatter goes to .venv/install.log; it is shown only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
echo "installing nnunet-supervise, nnU-Net v2 and torch into .venv (minutes the first time; log: .venv/install.log)"
if ! { .venv/bin/python -m pip install --quiet --upgrade pip && .venv/bin/python -m pip install --quiet -e '.[test]'; } \
    > .venv/install.log 2>&1; then
  tail -n 40 .venv/install.log >&2
  echo "install failed; the whole log is in .venv/install.log" >&2
  exit 1
fi
