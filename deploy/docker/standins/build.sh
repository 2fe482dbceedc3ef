#!/usr/bin/env bash
# Stand-in images for machines that reach no image registry (README.md
# beside this file). For each image compose.yaml names, it keeps the
# official one when the engine has it or can pull it, and otherwise builds
# (once: images are labelled with a digest of their recipe) a look-alike
# tagged tally-standin/NAME:TAG. It prints the variables that make
# compose.yaml use what it chose, for `eval` or an --env-file:
#
#   deploy/docker/standins/build.sh            # TALLY_KAFKA_IMAGE=... lines
#
# Needs: docker (any engine), debootstrap for the Debian base (as root), and
# Maven for Kafka's jars (deploy/kafka/fetch.sh). TALLY_STANDINS=always
# builds the stand-ins without trying to pull; =never only pulls.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
mode=${TALLY_STANDINS:-auto}

log() { printf 'standins: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# name  official image  compose.yaml's variable
images=(
    "debian debian:12-slim TALLY_DEBIAN_IMAGE"
    "kafka apache/kafka:3.9.1 TALLY_KAFKA_IMAGE"
    "postgres postgres:15-bookworm TALLY_POSTGRES_IMAGE"
    "nginx nginx:1.26.3-bookworm TALLY_NGINX_IMAGE"
    "redis redis:7-bookworm TALLY_REDIS_IMAGE"
)

have() { docker image inspect "$1" >/dev/null 2>&1; }

# 0 when the official image is there or could be pulled.
official() {
    [[ $mode != always ]] || return 1
    have "$1" && return 0
    log "pulling $1"
    timeout 300 docker pull -q "$1" >/dev/null 2>&1
}

# The digest of a stand-in's recipe: its files, the base image's id (and
# the Kafka version).
recipe_digest() {
    local name=$1 base=$2
    {
        printf '%s\n' "$name"
        [[ -z $base ]] || docker image inspect -f '{{.Id}}' "$base"
        if [[ -d $here/$name ]]; then
            (cd "$here" && find "$name" -type f -print0 | sort -z | xargs -0 sha256sum)
        fi
        [[ $name != kafka ]] || sha256sum "$root/deploy/kafka/pom.xml"
        [[ $name != debian ]] || sed -n '/^debian_base()/,/^}/p' "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
}

current() { [[ $(docker image inspect -f '{{index .Config.Labels "org.tally.standin.recipe"}}' "$1" 2>/dev/null) == "$2" ]]; }

# Debian 12 (bookworm) minbase from Debian's mirror, imported as an image.
debian_base() {
    local tag=$1 digest=$2 dir
    command -v debootstrap >/dev/null || die "could not build $tag: debootstrap not found (apt-get install debootstrap)"
    dir=$(mktemp -d)
    # shellcheck disable=SC2064 # the directory is fixed now
    trap "rm -rf '$dir'" RETURN
    log "debootstrap --variant=minbase bookworm (about a minute)"
    debootstrap --variant=minbase bookworm "$dir/rootfs" >"$dir/debootstrap.log" 2>&1 || {
        tail -n 20 "$dir/debootstrap.log" >&2
        die "could not build $tag: debootstrap failed"
    }
    rm -rf "$dir"/rootfs/var/cache/apt/archives/*.deb "$dir"/rootfs/var/lib/apt/lists/*
    tar -C "$dir/rootfs" -c . | docker import \
        -c 'CMD ["bash"]' -c "LABEL org.tally.standin.recipe=$digest" \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$tag" >/dev/null
}

# docker build of standins/NAME on the chosen Debian image.
standin_build() {
    local name=$1 tag=$2 digest=$3 base=$4 ctx
    ctx=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx'" RETURN
    cp -a "$here/$name/." "$ctx/"
    if [[ $name == kafka ]]; then
        cp -a "$("$root/deploy/kafka/fetch.sh" --print)" "$ctx/libs"
    fi
    docker build -q --build-arg "BASE=$base" --label "org.tally.standin.recipe=$digest" -t "$tag" "$ctx" \
        >/dev/null 2>"$ctx/build.log" || {
        tail -n 20 "$ctx/build.log" >&2
        die "could not build $tag"
    }
}

main() {
    local entry name image var tag digest t0 base=''
    command -v docker >/dev/null || die "docker not found"
    docker info >/dev/null 2>&1 || die "no docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset})"
    for entry in "${images[@]}"; do
        read -r name image var <<<"$entry"
        if official "$image"; then
            printf '%s=%s\n' "$var" "$image"
            [[ $name != debian ]] || base=$image
            continue
        fi
        [[ $mode != never ]] || die "could not pull $image (TALLY_STANDINS=never)"
        tag=tally-standin/${image#*/}
        digest=$(recipe_digest "$name" "$base")
        if ! current "$tag" "$digest"; then
            t0=$SECONDS
            log "building $tag, a stand-in for $image"
            if [[ $name == debian ]]; then
                debian_base "$tag" "$digest"
            else
                standin_build "$name" "$tag" "$digest" "$base"
            fi
            log "built $tag in $((SECONDS - t0))s"
        fi
        [[ $name != debian ]] || base=$tag
        printf '%s=%s\n' "$var" "$tag"
    done
}

main "$@"
