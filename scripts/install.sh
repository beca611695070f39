#!/usr/bin/env bash
# Install the appliance as a systemd service on Raspberry Pi OS Bookworm / Debian 12:
# Debian packages, the `appliance` system user (groups audio, gpio), a venv under the prefix
# with the package, /etc/appliance/appliance.env from the example (only if absent: never
# overwritten), the unit, then `systemctl enable --now` (a restart when it already runs).
# Safe to run again, e.g. after `git pull` to upgrade.
#
#   sudo scripts/install.sh [--prefix DIR] [--dry-run] [--no-start] [--pi | --no-pi]
#
#   --prefix DIR  where the venv goes (default /opt/appliance; the venv is DIR/venv)
#   --dry-run     print what would be done, change nothing (needs no root)
#   --no-start    install and enable, but do not start now
#   --pi/--no-pi  install the Raspberry Pi GPIO backend (lgpio); default: when on a Pi
set -euo pipefail

NAME=appliance
PREFIX=/opt/appliance
CONFIG_DIR=/etc/appliance # the appliance reads /etc/appliance/appliance.env by default
UNIT_DIR=/etc/systemd/system
UDEV_RULE=/etc/udev/rules.d/60-appliance-gpiochip.rules
STATE_DIR=/var/lib/appliance
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0
START=1
PI=auto

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-start) START=0; shift ;;
    --pi) PI=1; shift ;;
    --no-pi) PI=0; shift ;;
    -h | --help) usage 0 ;;
    *) printf 'install.sh: unknown option %s\n' "$1" >&2; usage 2 ;;
    esac
done

# The prefix goes into the unit file: an absolute path of plain characters only.
[[ "$PREFIX" =~ ^/[A-Za-z0-9._/-]*$ ]] || die "--prefix must be an absolute path of letters, digits, . _ - / (got '$PREFIX')"
PREFIX=${PREFIX%/}
[ -n "$PREFIX" ] || die "--prefix must not be /"
VENV="$PREFIX/venv"

# run CMD...: run it, or print it in a dry run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# write_file MODE OWNER:GROUP PATH: write stdin to PATH atomically (or print it in a dry run).
write_file() {
    local mode=$1 owner=$2 path=$3 tmp
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ write %s (mode %s, %s):\n' "$path" "$mode" "$owner"
        sed 's/^/|   /'
        return
    fi
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
}

systemd_running() { [ -d /run/systemd/system ]; }

if [ "$DRY_RUN" != 1 ] && [ "$(id -u)" -ne 0 ]; then
    die "run it as root: sudo $0 $*"
fi
if [ -r /etc/os-release ]; then
    # In a subshell: os-release sets NAME, among others.
    system=$(. /etc/os-release && echo "${VERSION_CODENAME:-?} (${PRETTY_NAME:-unknown})")
    [ "${system%% *}" = bookworm ] \
        || say "warning: made for Debian 12 / Raspberry Pi OS Bookworm; this is ${system#* }"
fi
if [ "$PI" = auto ]; then
    PI=0
    grep -qs "Raspberry Pi" /proc/device-tree/model && PI=1
fi

# ---- Debian packages ------------------------------------------------------------------
# Build tools for PyAudio and systemd-python, PortAudio and ALSA at run time, /bin/kill for
# ExecReload=, alsa-utils for trying the sound card by hand (aplay -l, arecord).
PACKAGES=(python3 python3-venv python3-dev gcc pkg-config libportaudio2 portaudio19-dev
          libsystemd-dev procps alsa-utils)
if [ "$PI" = 1 ]; then
    # lgpio drives the GPIO on every Pi (the Pi 5 too); its wheel needs nothing more, and
    # these let pip build it where no wheel exists for the board.
    for pkg in swig liblgpio-dev; do
        apt-cache show "$pkg" >/dev/null 2>&1 && PACKAGES+=("$pkg")
    done
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt_install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}")
    # Package lists may be missing or stale (a fresh image): refresh them once on failure.
    run "${apt_install[@]}" || { run apt-get update && run "${apt_install[@]}"; }
else
    say "Debian packages: all present"
fi

# ---- user and groups ------------------------------------------------------------------
# Raspberry Pi OS has a gpio group owning /dev/gpiochip*; plain Debian gets one, and a rule.
created_gpio=0
if ! getent group gpio >/dev/null; then
    say "creating the gpio group"
    run groupadd --system gpio
    created_gpio=1
fi
if ! getent passwd "$NAME" >/dev/null; then
    say "creating the $NAME system user"
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "voice appliance" "$NAME"
fi
run usermod --append --groups audio,gpio "$NAME"
if [ ! -e "$UDEV_RULE" ]; then
    say "udev rule: the gpio group may use /dev/gpiochip*"
    run mkdir -p "$(dirname "$UDEV_RULE")"
    write_file 0644 root:root "$UDEV_RULE" <<'EOF'
# Installed by the appliance's scripts/install.sh: GPIO chips for the gpio group.
SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"
EOF
    if systemd_running && command -v udevadm >/dev/null; then
        run udevadm control --reload
        run udevadm trigger --subsystem-match=gpio
    fi
fi

# ---- the venv and the package ---------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    say "creating the venv $VENV"
    run mkdir -p "$PREFIX"
    run python3 -m venv "$VENV"
fi
extras=""
[ "$PI" = 1 ] && extras="[pi]"
say "installing the appliance into $VENV"
# Build from a copy: an in-tree build would leave root-owned files in the clone.
if [ "$DRY_RUN" = 1 ]; then
    build=/tmp/appliance-build
    printf '+ copy pyproject.toml README.md appliance/ to a temporary directory %s\n' "$build"
else
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    tar -C "$SRC" --exclude=__pycache__ -cf - pyproject.toml README.md appliance | tar -C "$build" -xf -
fi
run "$VENV/bin/python" -m pip install --no-input --upgrade --use-pep517 "$build$extras"
run install -m 0644 "$SRC/README.md" "$PREFIX/README.md"
run install -m 0755 "$SRC/scripts/uninstall.sh" "$PREFIX/uninstall.sh"
# What uninstall.sh needs to know to undo exactly this.
write_file 0644 root:root "$PREFIX/install.state" <<EOF
created_gpio_group=$created_gpio
EOF

# ---- configuration --------------------------------------------------------------------
run install -d -m 0750 -o root -g "$NAME" "$CONFIG_DIR"
ENV_FILE="$CONFIG_DIR/appliance.env"
new_config=0
if [ -e "$ENV_FILE" ]; then
    say "keeping $ENV_FILE as it is"
    # Only ownership and mode, never the content: the service must read it, others not.
    run chown "root:$NAME" "$ENV_FILE"
    run chmod 0640 "$ENV_FILE"
else
    say "creating $ENV_FILE from the example"
    run install -m 0640 -o root -g "$NAME" "$SRC/config/appliance.env.example" "$ENV_FILE"
    new_config=1
fi

# ---- the unit -------------------------------------------------------------------------
say "installing $UNIT_DIR/$NAME.service"
run mkdir -p "$UNIT_DIR"
sed -e "s|^ExecStart=/opt/appliance/venv/bin/appliance|ExecStart=$VENV/bin/appliance|" \
    -e "s|^Documentation=file:///opt/appliance/|Documentation=file://$PREFIX/|" \
    "$SRC/systemd/$NAME.service" | write_file 0644 root:root "$UNIT_DIR/$NAME.service"

if ! systemd_running; then
    # A chroot or an image being built: enable for the next boot, start nothing now.
    say "systemd is not running here: enabling $NAME for the next boot"
    run systemctl enable "$NAME.service"
elif [ "$START" = 0 ]; then
    run systemctl daemon-reload
    run systemctl enable "$NAME.service"
else
    run systemctl daemon-reload
    if systemctl is-active --quiet "$NAME.service"; then
        say "restarting $NAME with the new version"
        run systemctl enable "$NAME.service"
        run systemctl restart "$NAME.service" || say "warning: $NAME did not restart; see: journalctl -u $NAME"
    else
        say "starting $NAME"
        run systemctl enable --now "$NAME.service" \
            || say "warning: $NAME did not start; see: journalctl -u $NAME -e"
    fi
fi

say "done."
if [ "$new_config" = 1 ]; then
    cat >&2 <<EOF

Next: set AZURE_VOICELIVE_ENDPOINT and the credentials in $ENV_FILE
(sudoedit $ENV_FILE), then: sudo systemctl restart $NAME
Until then the service stops with exit code 78 (configuration error) and is not restarted.
EOF
fi
cat >&2 <<EOF
Logs:   journalctl -u $NAME -f
Check:  sudo -u $NAME $VENV/bin/appliance check
EOF
