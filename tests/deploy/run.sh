#!/usr/bin/env bash
# One deploy check (compose.yaml, the Dockerfiles, the container scripts),
# run without a Docker engine. tests/deploy/CMakeLists.txt makes one ctest
# test of each; by hand:  tests/deploy/run.sh CHECK [BIN_DIR]
#
#   compose-schema    compose.yaml against the compose-spec JSON Schema
#   compose-v1        `docker compose config -q` (the v2 plugin), else Debian's
#                     docker-compose (v1): interpolation and its own schema;
#                     skipped (77) when neither is installed
#   compose-rules     check_compose.py: scaling, dependencies, settings
#   dockerfile-lint   hadolint on both Dockerfiles and the stand-ins
#   dockerfile-rules  check_dockerfile.py (BIN_DIR: the build's bin/, for
#                     the runtime-library check)
#   shell             bash -n / sh -n and shellcheck on the container scripts
#   entrypoint        test_entrypoint.sh   gateway   test_gateway.sh
#   healthcheck       test_healthcheck.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$("$here/install-tools.sh" --print)
py=$bin/python
check=${1:?usage: run.sh CHECK [BIN_DIR]}

case $check in
compose-schema)
    "$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$root/compose.yaml"
    ;;
compose-v1)
    # A clean environment, so the defaults in compose.yaml are what is checked.
    # The Compose v2 plugin when installed (tests/compose/run.sh builds it),
    # else Debian's docker-compose 1.29.
    if env -i PATH="$PATH" HOME="$HOME" docker compose version >/dev/null 2>&1; then
        env -i PATH="$PATH" HOME="$HOME" docker compose --project-directory "$root" -f "$root/compose.yaml" \
            --profile test --profile tools config -q
        echo "docker compose $(env -i PATH="$PATH" HOME="$HOME" docker compose version --short): compose.yaml is valid"
        exit 0
    fi
    command -v docker-compose >/dev/null || { echo "skipped: neither docker compose nor docker-compose installed"; exit 77; }
    env -i PATH="$PATH" HOME="$HOME" docker-compose --project-directory "$root" -f "$root/compose.yaml" \
        --profile test --profile tools config -q
    echo "docker-compose $(docker-compose version --short): compose.yaml is valid"
    ;;
compose-rules) "$py" "$here/check_compose.py" "$root" ;;
dockerfile-lint)
    "$bin/hadolint" "$root/deploy/docker/Dockerfile" "$root/deploy/docker/gateway.Dockerfile" \
        "$root"/deploy/docker/standins/*/Dockerfile
    echo "hadolint $("$bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -n 1): no findings"
    ;;
dockerfile-rules) "$py" "$here/check_dockerfile.py" "$root" "${2:-}" ;;
shell)
    standins=$root/deploy/docker/standins
    bash_scripts=("$root/deploy/docker/entrypoint.sh" "$root/deploy/docker/healthcheck.sh"
        "$root/deploy/docker/select-e2e-tests.sh" "$here"/*.sh "$root/tests/compose/run.sh"
        "$root/tests/integration/test_webhooks_listen.sh" "$root/tests/support/check.sh"
        "$standins/build.sh" "$standins/kafka/run.sh" "$standins"/kafka/bin/*.sh "$standins/postgres/docker-entrypoint.sh")
    sh_scripts=("$root/deploy/docker/gateway.sh" "$standins/nginx/docker-entrypoint.sh" "$standins/redis/docker-entrypoint.sh")
    for f in "${bash_scripts[@]}"; do bash -n "$f"; done
    for f in "${sh_scripts[@]}"; do sh -n "$f"; done
    # -x from the root: the `# shellcheck source=` paths are the repository's
    (cd "$root" && "$bin/shellcheck" -x "${bash_scripts[@]}" "${sh_scripts[@]}")
    echo "shellcheck $("$bin/shellcheck" --version | sed -n 's/^version: //p'): $((${#bash_scripts[@]} + ${#sh_scripts[@]})) scripts clean"
    ;;
entrypoint) "$here/test_entrypoint.sh" "$root" "$py" ;;
gateway) "$here/test_gateway.sh" "$root" "$py" ;;
healthcheck) "$here/test_healthcheck.sh" "$root" "$py" ;;
*)
    echo "unknown check: $check" >&2
    exit 2
    ;;
esac
