#!/usr/bin/env bash
# The main job end to end on an embedded default: a generated ward capture -> agent (replay
# --uplink) -> local TLS mosquitto -> collector -> SQLite -> HTML report (scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh)
exec "$PY" scripts/demo.py "$@"
