#!/usr/bin/env bash
# The README's second command: set up, lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/bootstrap.sh
ruff check .
python scripts/gen_proto.py --check
exec python -m pytest -q "$@"
