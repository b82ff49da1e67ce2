#!/usr/bin/env bash
# The README's first command: set up, then run a real Hyperband study end to end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/bootstrap.sh
exec hpod demo "$@"
