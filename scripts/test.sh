#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, types, tests. Fails when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh)
BIN=$(dirname "$PY")
export TZ=UTC LC_ALL=C.UTF-8 PYTHONHASHSEED=0
"$BIN/ruff" check agent tests scripts
"$BIN/mypy" --strict agent
set +e
"$BIN/pytest" -q -p no:cacheprovider --durations=15 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$rc"
