#!/usr/bin/env bash
# Fetches the Apache Kafka broker jars (KRaft, version pinned in pom.xml) from
# Maven Central into a cache directory, so the local runner and the tests can
# start a real broker without Docker. Debian packages no Kafka.
#
#   deploy/kafka/fetch.sh            # prints nothing on the fast path
#   deploy/kafka/fetch.sh --print    # also prints the libs directory on stdout
#
# Cache: ${TALLY_CACHE:-$HOME/.cache/tally}/kafka-<version>/libs. A stamp file
# holding the pom's checksum is written only after a complete copy, so an
# interrupted fetch is redone and a second start needs no network.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pom=$here/pom.xml

die() { printf '%s\n' "$*" >&2; exit 1; }

kafka_version() {
    sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n 1
}

main() {
    local version cache libs stamp sum
    version=$(kafka_version)
    [[ -n $version ]] || die "could not read kafka.version from $pom"
    cache=${TALLY_CACHE:-$HOME/.cache/tally}/kafka-$version
    libs=$cache/libs
    stamp=$cache/complete.stamp
    sum=$(sha256sum "$pom" | cut -d' ' -f1)

    if [[ ! -f $stamp || $(cat "$stamp") != "$sum" ]]; then
        command -v mvn >/dev/null ||
            die "could not fetch kafka: mvn not found (apt-get install maven, or run deploy/install-deps.sh)"
        printf 'fetching kafka %s jars into %s\n' "$version" "$libs" >&2
        rm -rf "$libs" "$stamp"
        mkdir -p "$libs"
        mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$libs" \
            >"$cache/fetch.log" 2>&1 || {
            tail -n 20 "$cache/fetch.log" >&2
            die "could not fetch kafka: maven failed, see $cache/fetch.log"
        }
        ls "$libs"/kafka_2.13-"$version".jar >/dev/null 2>&1 ||
            die "could not fetch kafka: kafka_2.13-$version.jar missing from $libs"
        printf '%s\n' "$sum" >"$stamp"
    fi
    if [[ ${1:-} == --print ]]; then
        printf '%s\n' "$libs"
    fi
}

main "$@"
