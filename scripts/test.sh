#!/usr/bin/env bash
# Run every check: ruff, mypy --strict, and the whole pytest suite (unit + integration).
# Integration tests start their own NATS and Valkey unless NATS_URL / REDIS_URL are set.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test
cd "$ROOT"
set +e
# The status page tests drive Debian's Chromium (never a browser Playwright downloads):
# install it once, only when it is missing and apt-get is there; the tests fail without it.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    echo "== apt-get install chromium (for the status page tests)" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; } ||
        echo "chromium could not be installed: the status page tests will fail" >&2
fi
echo "== ruff" >&2
"$VENV/bin/ruff" check services shared tests bench || exit 1
echo "== mypy --strict services shared" >&2
"$VENV/bin/mypy" --strict services shared || exit 1
# LLMSCHED_TEST_WORKERS=N runs pytest in N pytest-xdist workers: most integration tests wait
# on real servers' timers, so two halve the wall time even on two cores (README.md has
# the figures). Default 0, one process: with two workers and another process keeping a core
# busy, one run in three stalled an in-process fleet for 5 s and failed a fault test. A
# "-n N" among the arguments wins over both.
WORKERS="${LLMSCHED_TEST_WORKERS:-0}"
echo "== pytest ($WORKERS xdist workers)" >&2
"$VENV/bin/python" -m pytest -q -n "$WORKERS" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
