#!/usr/bin/env bash
# Install ward-agent on a Raspberry Pi OS / Debian sensor box, or into a staging root for an image.
#
#   scripts/install.sh [--root DIR] [--tap IFACE] [--no-venv] [--python PY]
#   scripts/install.sh [--root DIR] --uninstall [--purge]
#
# What goes where (DIR/... with --root):
#   user        system user and group ward-agent (systemd-sysusers; with --root into DIR/etc/passwd,
#               group, shadow, gshadow, which must live in DIR/etc: DIR/etc is created if missing)
#   venv        /opt/ward-agent/venv, `pip install` of this checkout; reinstalled only when the source
#               changed (a checksum of pyproject.toml and agent/ in /opt/ward-agent/.source-sha256)
#   config      /etc/ward-agent/{agent.toml,roles.toml} from firmware-config/, root:ward-agent 0640 in a
#               0750 folder. An existing file that differs is never overwritten: the new sample goes
#               beside it as NAME.new. agent.toml gets capture.interface = the --tap interface.
#   keys        /etc/ward-agent/keys (ward-agent, 0700): `ward-agent keys init --role sensor` when no key
#               is there yet and the installed agent has the keys command; /etc/ward-agent/tls
#               (ward-agent, 0700) is made empty for the broker's CA and this sensor's client certificate
#   units       /etc/systemd/system/ward-agent.service and ward-collector.service (0644)
#   tap         /etc/systemd/network/10-ward-tap.network and /etc/sysctl.d/99-ward-sensor.conf, with eth1
#               replaced by --tap; a NetworkManager drop-in marking the tap unmanaged when
#               /etc/NetworkManager exists
# Then, only without --root: systemctl daemon-reload, enable ward-agent and systemd-networkd, apply the
# sysctl file if the tap interface exists. The service is enabled, not started: edit agent.toml first.
#
# Idempotent: a second run with the same checkout changes no file, mode or owner. Files are written
# only when their content, mode or owner differs.
#
# --no-venv    skip the virtual environment (tests, or an image whose venv is built elsewhere); the
#              keys step then uses --python PY (its `-m agent` must work), or is skipped with a note
# --root DIR   staging root. The venv's scripts are rewritten to point at /opt/ward-agent/venv, so
#              they run once DIR is the root file system (run DIR/opt/ward-agent/venv/bin/python -m
#              agent before that). Keys generated into a staging root are shared by every box made
#              from that image: delete DIR/etc/ward-agent/keys/* before imaging, and run this script
#              (or `ward-agent keys init`) on each box.
# --uninstall  remove the units, tap files, venv and /opt/ward-agent; keep configuration, keys, state
#              and the user. --purge also removes /etc/ward-agent (keys included), /var/lib/ward-agent
#              and /var/lib/ward-collector. The user stays (Debian practice: files may still be owned
#              by its uid); remove it with `userdel ward-agent`.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
USER_NAME=ward-agent
ROOT="" TAP=eth1 NO_VENV=0 UNINSTALL=0 PURGE=0 KEYS_PY=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
note() { echo "install: $*" >&2; }
die() { echo "install: $*" >&2; exit 2; }

while (($#)); do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$(realpath -m "$2"); shift 2 ;;
        --tap) [ $# -ge 2 ] || die "--tap needs an interface name"; TAP=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; KEYS_PY=$2; shift 2 ;;
        --no-venv) NO_VENV=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ "$TAP" =~ ^[A-Za-z0-9_-]{1,15}$ ]] || die "--tap: not an interface name: $TAP"
[ "$PURGE" -eq 0 ] || [ "$UNINSTALL" -eq 1 ] || die "--purge goes with --uninstall"
[ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ] || die "run as root (or use --root DIR for a staging root)"
if [ -n "$ROOT" ] && [ "$ROOT" = / ]; then ROOT=""; fi

OPT=$ROOT/opt/ward-agent
VENV=$OPT/venv
ETC=$ROOT/etc/ward-agent
KEYS=$ETC/keys
UNITS=$ROOT/etc/systemd/system
NETWORK=$ROOT/etc/systemd/network/10-ward-tap.network
SYSCTL=$ROOT/etc/sysctl.d/99-ward-sensor.conf
NM_DROPIN=$ROOT/etc/NetworkManager/conf.d/90-ward-tap.conf
STATES=("$ROOT/var/lib/ward-agent" "$ROOT/var/lib/ward-collector")
SERVICES=(ward-agent.service ward-collector.service)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

live() { [ -z "$ROOT" ]; }

remove() {  # remove paths that exist, saying so
    local path
    for path in "$@"; do
        if [ -e "$path" ] || [ -L "$path" ]; then rm -rf -- "$path"; note "removed $path"; fi
    done
}

if [ "$UNINSTALL" -eq 1 ]; then
    if live && command -v systemctl >/dev/null; then
        systemctl disable --now "${SERVICES[@]}" 2>/dev/null || true
    fi
    remove "${SERVICES[@]/#/$UNITS/}" "$NETWORK" "$SYSCTL" "$NM_DROPIN" "$OPT"
    [ "$PURGE" -eq 0 ] || remove "$ETC" "${STATES[@]}"
    if live && command -v systemctl >/dev/null; then systemctl daemon-reload 2>/dev/null || true; fi
    [ "$PURGE" -eq 1 ] && note "user $USER_NAME kept; remove it with: userdel $USER_NAME"
    exit 0
fi

# --- user ---------------------------------------------------------------------------------------
SYSUSER="u $USER_NAME - \"ward-agent sensor\" /var/lib/ward-agent /usr/sbin/nologin"
if [ "$(id -u)" -ne 0 ]; then
    note "not root: user $USER_NAME not created in $ROOT"
elif command -v systemd-sysusers >/dev/null; then
    mkdir -p "$ROOT/etc"
    systemd-sysusers ${ROOT:+--root="$ROOT"} --inline "$SYSUSER" >&2
elif live; then
    id "$USER_NAME" >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/ward-agent \
        --no-create-home --shell /usr/sbin/nologin --comment "ward-agent sensor" "$USER_NAME"
else
    note "systemd-sysusers is missing: user $USER_NAME not created in $ROOT; files stay owned by root"
fi
passwd_field() {  # passwd_field FIELD: the user's uid (3) or gid (4) in the target's /etc/passwd
    awk -F: -v user="$USER_NAME" -v field="$1" '$1 == user { print $field }' "$ROOT/etc/passwd" 2>/dev/null
}
UID_NUM=$(passwd_field 3) GID_NUM=$(passwd_field 4)
CAN_CHOWN=0
[ "$(id -u)" -eq 0 ] && [ -n "$UID_NUM" ] && CAN_CHOWN=1
[ "$CAN_CHOWN" -eq 1 ] || note "not root or no user $USER_NAME: ownership left as is"

# --- helpers that change something only when it differs ----------------------------------------
owner_of() {  # owner_of root|service|service-group: the uid:gid wanted, or "" when not settable
    [ "$CAN_CHOWN" -eq 1 ] || { echo ""; return; }
    case "$1" in
        root) echo "0:0" ;;
        service) echo "$UID_NUM:$GID_NUM" ;;
        service-group) echo "0:$GID_NUM" ;;
    esac
}

fix_meta() {  # fix_meta PATH MODE OWNER
    local path=$1 mode=$2 owner
    owner=$(owner_of "$3")
    [ "$(stat -c %a "$path")" = "${mode#0}" ] || chmod "$mode" "$path"
    [ -z "$owner" ] || [ "$(stat -c %u:%g "$path")" = "$owner" ] || chown "$owner" "$path"
}

ensure_dir() {  # ensure_dir DIR MODE OWNER
    [ -d "$1" ] || { mkdir -p "$1"; note "created $1"; }
    fix_meta "$@"
}

put() {  # put SRC DEST MODE OWNER: copy when the content differs, then fix mode and owner
    local src=$1 dest=$2
    mkdir -p "$(dirname "$dest")"
    if ! cmp -s "$src" "$dest"; then
        cp -- "$src" "$dest.tmp.$$" && mv -f -- "$dest.tmp.$$" "$dest"
        note "wrote $dest"
    fi
    fix_meta "$dest" "$3" "$4"
}

put_config() {  # put_config SRC NAME: never overwrite a differing existing file; write NAME.new instead
    local src=$1 dest=$ETC/$2
    if [ -e "$dest" ] && ! cmp -s "$src" "$dest"; then
        put "$src" "$dest.new" 0640 service-group
        note "kept your $dest; the new sample is $dest.new"
    else
        put "$src" "$dest" 0640 service-group
    fi
}

for_tap() {  # for_tap SRC OUT: the file with the sample's eth1 replaced by the tap interface
    sed -e "s/\beth1\b/$TAP/g" "$1" > "$2"
}

# --- virtual environment ------------------------------------------------------------------------
source_sum() {
    (cd "$REPO" && find pyproject.toml agent -type f ! -path '*/__pycache__/*' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

ensure_dir "$OPT" 0755 root
put "$REPO/README.md" "$OPT/README.md" 0644 root
if [ "$NO_VENV" -eq 0 ]; then
    stamp=$OPT/.source-sha256 wanted=$(source_sum)
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
        note "created $VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        note "pip install $REPO into $VENV (takes a minute)"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$REPO" >&2
        if ! live; then  # scripts must name the interpreter by its path on the target
            grep -lZs "^#!$VENV/bin/" "$VENV"/bin/* |
                xargs -0 -r sed -i "1s|^#!$VENV/bin/|#!/opt/ward-agent/venv/bin/|"
            sed -i "s|$VENV|/opt/ward-agent/venv|g" "$VENV"/bin/activate* "$VENV/pyvenv.cfg"
        fi
        echo "$wanted" > "$stamp"
    fi
    KEYS_PY=$VENV/bin/python
fi

# --- configuration and keys ---------------------------------------------------------------------
ensure_dir "$ETC" 0750 service-group
sed -e '/^\[capture\]/,/^\[/ s/^interface = ""$/interface = "'"$TAP"'"/' \
    "$REPO/firmware-config/agent.toml" > "$WORK/agent.toml"
cmp -s "$WORK/agent.toml" "$REPO/firmware-config/agent.toml" &&
    note "capture.interface not found in the sample agent.toml; set it by hand"
put_config "$WORK/agent.toml" agent.toml
put_config "$REPO/firmware-config/roles.toml" roles.toml

ensure_dir "$KEYS" 0700 service
ensure_dir "$ETC/tls" 0700 service  # uplink.ca_file, cert_file, key_file: put the broker PKI files here
if compgen -G "$KEYS/sensor.key" >/dev/null; then
    :
elif [ -n "$KEYS_PY" ] && "$KEYS_PY" -m agent keys --help >/dev/null 2>&1; then
    "$KEYS_PY" -m agent keys init --role sensor --dir "$KEYS" >&2
fi
if compgen -G "$KEYS/sensor.key" >/dev/null; then
    for key in "$KEYS"/*; do
        case "$key" in *.key) fix_meta "$key" 0600 service ;; *) fix_meta "$key" 0644 service ;; esac
    done
else
    note "no sensor key made (no agent with a keys command); make it later with:"
    note "  ward-agent keys init --role sensor --dir /etc/ward-agent/keys"
fi

# --- units and the tap --------------------------------------------------------------------------
for unit in "${SERVICES[@]}"; do
    put "$REPO/systemd/$unit" "$UNITS/$unit" 0644 root
done
for_tap "$REPO/firmware-config/10-ward-tap.network" "$WORK/network"
put "$WORK/network" "$NETWORK" 0644 root
for_tap "$REPO/firmware-config/99-ward-sensor.conf" "$WORK/sysctl"
put "$WORK/sysctl" "$SYSCTL" 0644 root
if [ -d "$ROOT/etc/NetworkManager" ]; then
    printf '%s\n' "# Written by ward-agent's install.sh: leave the tap interface to systemd-networkd." \
        "[keyfile]" "unmanaged-devices=interface-name:$TAP" > "$WORK/nm"
    put "$WORK/nm" "$NM_DROPIN" 0644 root
fi
if [ -f "$ROOT/etc/dhcpcd.conf" ] && ! grep -Eq "^\s*denyinterfaces\s.*\b$TAP\b" "$ROOT/etc/dhcpcd.conf"; then
    note "dhcpcd would configure $TAP: add 'denyinterfaces $TAP' to /etc/dhcpcd.conf"
fi

if live; then
    systemctl daemon-reload || note "systemctl daemon-reload failed (no running systemd?)"
    systemctl enable ward-agent.service systemd-networkd.service >&2
    if [ -e "/sys/class/net/$TAP" ]; then
        sysctl -q -p "$SYSCTL"
    else
        note "$TAP is absent; its sysctl settings apply when it appears"
    fi
    note "installed; edit /etc/ward-agent/agent.toml, then: systemctl start ward-agent"
else
    note "installed into $ROOT"
fi
