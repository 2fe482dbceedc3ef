#!/usr/bin/env bash
# Installs the tools of the deploy checks (tests/deploy) when they are
# missing, and is silent when they are there:
#   * a venv with requirements.txt (check-jsonschema with the compose-spec
#     schema, hadolint, shellcheck, dockerfile-parse, PyYAML) in
#     ${TALLY_CACHE:-~/.cache/tally}/deploy-tools/<hash of requirements.txt>
#   * Debian's docker-compose (v1, validates compose.yaml without an engine),
#     with apt-get, only as root; without it that one check is skipped.
# Prints the venv's bin directory on stdout with --print.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
req=$here/requirements.txt
sum=$(sha256sum "$req" | cut -c1-12)
base=${TALLY_CACHE:-$HOME/.cache/tally}/deploy-tools
venv=$base/$sum
stamp=$venv/complete.stamp

die() { printf 'install-tools: %s\n' "$*" >&2; exit 1; }

# One installer at a time (ctest may start several checks at once).
mkdir -p "$base"
exec 9>"$base/lock"
flock 9

apt_install() {
    ((EUID == 0)) && command -v apt-get >/dev/null || return 1
    printf 'install-tools: installing %s with apt-get\n' "$*" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "$@" ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "$@"; }; } >&2
}

make_venv() {
    local log=$base/install.log
    rm -rf "$venv"
    printf 'install-tools: creating %s\n' "$venv" >&2
    if ! python3 -m venv "$venv" >"$log" 2>&1; then
        # Debian's python3 without its venv module.
        apt_install python3-venv || die "could not create a venv: see $log (apt-get install python3-venv)"
        python3 -m venv "$venv" >"$log" 2>&1 || die "could not create a venv: see $log"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >>"$log" 2>&1 || {
        tail -n 20 "$log" >&2
        die "could not install the deploy tools: see $log"
    }
    touch "$stamp"
}

[[ -f $stamp ]] || make_venv

if ! command -v docker-compose >/dev/null; then
    apt_install docker-compose || true
fi

if [[ ${1:-} == --print ]]; then
    printf '%s\n' "$venv/bin"
fi
