#!/usr/bin/env bash
# Writes deploy/base/secrets/server.env and worker.env, the two Secrets `kubectl apply -k
# deploy/base` generates: fresh random Redis passwords, the server's and the workers' Redis URLs
# for the in-cluster Redis, and one API token (printed once; only its hash is stored), so the
# server starts with authentication on.
#
#   bash deploy/make-secrets.sh [TENANT]          # TENANT of the token (default: default)
#   HPOD_REDIS_URL=rediss://... bash deploy/make-secrets.sh   # an external Redis's server URL
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/base/secrets"
tenant="${1:-default}"
for f in server.env worker.env; do
  if [ -e "$dir/$f" ]; then
    echo "make-secrets: $dir/$f exists; delete it first to make new secrets" >&2
    exit 1
  fi
done
py="$(command -v python3 || command -v python)"
rand() { "$py" -c 'import secrets; print(secrets.token_urlsafe(24))'; }
redis_pw="$(rand)"
worker_pw="$(rand)"
token="hpod_$(rand)"
hash="$("$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())' "$token")"
mkdir -p "$dir"
umask 077
cat > "$dir/server.env" <<END
REDIS_PASSWORD=$redis_pw
REDIS_WORKER_PASSWORD=$worker_pw
HPOD_REDIS_URL=${HPOD_REDIS_URL:-redis://:$redis_pw@hpod-redis:6379/0}
HPOD_TOKENS=$hash $tenant user
END
cat > "$dir/worker.env" <<END
HPOD_REDIS_URL=redis://hpod-worker:$worker_pw@hpod-redis:6379/0
END
echo "wrote $dir/server.env and $dir/worker.env"
echo "the API token for tenant $tenant (shown once; clients: HPOD_TOKEN=... or Client(token=...)):"
echo "$token"
