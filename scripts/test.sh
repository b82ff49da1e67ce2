#!/usr/bin/env bash
# The README's second command: set up, lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/bootstrap.sh
ruff check .
# Redis 7 for the ACL-selector tests when Debian's packages are reachable (else they skip).
HPOD_TEST_REDIS7="${HPOD_TEST_REDIS7:-$(bash scripts/redis7.sh)}"
export HPOD_TEST_REDIS7
python scripts/gen_proto.py --check
exec python -m pytest -q "$@"
