# Shared setup for scripts/test and scripts/simulate: system packages, then .venv.
# Sourced, not run. Safe to re-run: it installs only what is missing or changed.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$ROOT/.venv"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

# ensure_packages PKG...: apt-get install the packages that are not installed yet.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local cmd=(apt-get install -y --no-install-recommends "${missing[@]}")
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo)
        else
            say "missing system packages; run this, then try again:"
            echo "    sudo apt-get update && sudo ${cmd[*]}" >&2
            exit 1
        fi
    fi
    say "installing system packages: ${missing[*]}"
    # A fresh machine may have no package lists yet; refresh once if the install fails.
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" "${cmd[@]}" \
        || { DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update \
             && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" "${cmd[@]}"; }
}

# Packages the project needs to build and run (PyAudio, systemd-python, PulseAudio).
BASE_PACKAGES=(python3 python3-venv python3-dev gcc pkg-config portaudio19-dev
               libsystemd-dev pulseaudio pulseaudio-utils libasound2-plugins)

# ensure_venv EXTRAS: create .venv and install the project with EXTRAS ("dev" or "")
# unless pyproject.toml and the extras are unchanged since the last install.
ensure_venv() {
    local extras="$1" stamp="$VENV/.installed" want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) [$extras]"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ]; then
        local have; have=$(cat "$stamp")
        # An install with the dev extra also serves a plain run.
        [ "$have" = "$want" ] && return 0
        [ -z "$extras" ] && [ "${have%% *}" = "${want%% *}" ] && return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        python3 -m venv "$VENV"
    fi
    say "installing the project into $VENV"
    local target="$ROOT" log="$VENV/install.log"
    [ -n "$extras" ] && target="$ROOT[$extras]"
    if ! { "$VENV/bin/python" -m pip install --upgrade pip \
           && "$VENV/bin/python" -m pip install -e "$target"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        say "installing the project failed; the whole log is in $log"
        exit 1
    fi
    echo "$want" > "$stamp"
}
