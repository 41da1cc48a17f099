#!/usr/bin/env bash
# Run every check: ruff, mypy --strict, and the whole pytest suite (unit + integration).
# Integration tests start their own NATS and Valkey unless NATS_URL / REDIS_URL are set.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test
cd "$ROOT"
set +e
echo "== ruff" >&2
"$VENV/bin/ruff" check services shared tests bench || exit 1
echo "== mypy --strict services shared" >&2
"$VENV/bin/mypy" --strict services shared || exit 1
echo "== pytest" >&2
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
