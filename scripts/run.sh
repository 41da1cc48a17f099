#!/usr/bin/env bash
# Run the whole system on the embedded default (NATS, Valkey, every service, a demo fleet).
# Extra arguments go to `llmsched up` (e.g. --config FILE, --api-port 9090).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" embedded
cd "$ROOT"
exec "$VENV/bin/llmsched" up "$@"
