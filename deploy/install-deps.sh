#!/usr/bin/env bash
# Installs what Tally needs on Debian 12 and is missing, then fetches the
# Kafka broker jars (deploy/kafka/fetch.sh). Silent when everything is there;
# `apt-get update` runs only when a package is missing. Installing needs root.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

packages=(
    build-essential cmake pkg-config
    libh2o-evloop-dev librdkafka-dev libjansson-dev libpq-dev libcmocka-dev
    libssl-dev zlib1g-dev uuid-dev libcurl4-openssl-dev
    postgresql-15 openjdk-17-jre-headless maven nginx-light
    redis-server libhiredis-dev
    curl jq clang-format nftables
)

die() { printf '%s\n' "$*" >&2; exit 1; }

missing_packages() {
    local pkg
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' ||
            printf '%s\n' "$pkg"
    done
}

# The runner makes its own clusters; keep the package from creating and
# starting a system cluster on port 5432 (only when postgresql-common is not
# configured yet; an existing choice is left alone).
no_default_cluster() {
    local conf=/etc/postgresql-common/createcluster.conf
    [[ -e $conf ]] && return 0
    mkdir -p "${conf%/*}"
    printf 'create_main_cluster = false\n' >"$conf"
}

install() {
    ((EUID == 0)) ||
        die "missing packages: $* (run as root: apt-get install $*)"
    printf 'installing: %s\n' "$*" >&2
    no_default_cluster
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$@" >&2
}

main() {
    local missing
    command -v dpkg-query >/dev/null || die "could not check packages: this is not Debian (dpkg-query missing)"
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} > 0)); then
        install "${missing[@]}"
    fi
    "$root/deploy/kafka/fetch.sh"
}

main "$@"
