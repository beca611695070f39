#!/usr/bin/env bash
# Remove what scripts/install.sh installed: the service (stopped and disabled), the unit, the
# venv under the prefix, the state directory, the udev rule, the `appliance` user (and the
# gpio group if install.sh created it). /etc/appliance/appliance.env stays (owned by root)
# unless --purge, which also removes /etc/appliance and local drop-ins of the unit.
#
#   sudo scripts/uninstall.sh [--prefix DIR] [--purge] [--dry-run]
#
# install.sh copies this script to PREFIX/uninstall.sh, so it also works without the clone.
set -euo pipefail

NAME=appliance
PREFIX=/opt/appliance
CONFIG_DIR=/etc/appliance
UNIT_DIR=/etc/systemd/system
UDEV_RULE=/etc/udev/rules.d/60-appliance-gpiochip.rules
STATE_DIR=/var/lib/appliance
DRY_RUN=0
PURGE=0

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() {
    printf 'uninstall.sh: %s\n' "$*" >&2
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
    --purge) PURGE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage 0 ;;
    *) printf 'uninstall.sh: unknown option %s\n' "$1" >&2; usage 2 ;;
    esac
done
[[ "$PREFIX" =~ ^/[A-Za-z0-9._/-]*$ ]] || die "--prefix must be an absolute path (got '$PREFIX')"
PREFIX=${PREFIX%/}
case "$PREFIX" in
"" | /usr | /usr/local | /opt | /etc | /var | /home) die "refusing to remove the prefix $PREFIX" ;;
esac

run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if [ "$DRY_RUN" != 1 ] && [ "$(id -u)" -ne 0 ]; then
    die "run it as root: sudo $0 $*"
fi

UNIT="$UNIT_DIR/$NAME.service"
if [ -d /run/systemd/system ]; then
    if systemctl cat "$NAME.service" >/dev/null 2>&1; then
        say "stopping and disabling $NAME"
        run systemctl disable --now "$NAME.service"
    fi
elif [ -e "$UNIT" ]; then
    run systemctl disable "$NAME.service"
fi
if [ -e "$UNIT" ]; then
    say "removing $UNIT"
    run rm -f "$UNIT"
fi
if [ "$PURGE" = 1 ] && [ -d "$UNIT.d" ]; then
    say "removing the drop-ins in $UNIT.d"
    run rm -rf "$UNIT.d"
fi
if [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
    run systemctl reset-failed "$NAME.service" 2>/dev/null || true
fi

created_gpio=0
if [ -r "$PREFIX/install.state" ]; then
    grep -qx 'created_gpio_group=1' "$PREFIX/install.state" && created_gpio=1
fi
if [ -d "$PREFIX" ]; then
    say "removing $PREFIX"
    run rm -rf "$PREFIX"
fi
if [ -d "$STATE_DIR" ] || [ -L "$STATE_DIR" ]; then
    say "removing $STATE_DIR"
    run rm -rf "$STATE_DIR"
fi
if [ -e "$UDEV_RULE" ]; then
    say "removing $UDEV_RULE"
    run rm -f "$UDEV_RULE"
    if [ -d /run/systemd/system ] && command -v udevadm >/dev/null; then
        run udevadm control --reload
    fi
fi

ENV_FILE="$CONFIG_DIR/appliance.env"
if [ "$PURGE" = 1 ]; then
    if [ -d "$CONFIG_DIR" ]; then
        say "removing $CONFIG_DIR (--purge)"
        run rm -rf "$CONFIG_DIR"
    fi
elif [ -d "$CONFIG_DIR" ]; then
    # The group goes away with the user: leave the file to root alone, still 0640.
    say "keeping $ENV_FILE (remove it with --purge)"
    run chgrp -R root "$CONFIG_DIR"
fi

if getent passwd "$NAME" >/dev/null; then
    say "removing the $NAME user"
    run userdel "$NAME"
fi
if getent group "$NAME" >/dev/null; then
    run groupdel "$NAME"
fi
if [ "$created_gpio" = 1 ] && getent group gpio >/dev/null; then
    say "removing the gpio group (install.sh created it)"
    run groupdel gpio
fi
say "done."
