#!/usr/bin/env bash
# The main job end to end on an embedded default: generate a ward capture, replay it through the
# sensor pipeline, print the records and a readable summary.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh)
OUT=${WARD_DEMO_DIR:-build/demo}
mkdir -p "$OUT"
"$PY" scripts/wardgen.py sample "$OUT/ward-sample.pcap"
"$(dirname "$PY")/ward-agent" replay "$OUT/ward-sample.pcap" --emit "$OUT/records.jsonl" --report -
echo "records: $OUT/records.jsonl"
