#!/usr/bin/env bash
# Installs everything the agent, its demo and its tests need, then prints the venv's python path.
# Idempotent: Debian packages are installed only when missing, the venv is reused when present.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WARD_VENV:-.venv}
DEBS=(tshark tcpdump softflowd iproute2 mosquitto postgresql chromium systemd)

missing=()
for pkg in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

python3 - <<'PY' || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
stamp="$VENV/.ward-agent-installed"
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q -e '.[test,postgresql]' >&2
    echo "$wanted" > "$stamp"
fi
echo "$VENV/bin/python"
