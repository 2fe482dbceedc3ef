# Tally gateway: the official nginx image (Debian 12 based) with Tally's
# config, deploy/nginx/tally.conf.template, rendered at start by gateway.sh.
# Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t tally-gateway:dev .
#
# As in the official image, the nginx master runs as root only to open the
# logs (the container's stdout and stderr) and its workers run as the
# unprivileged `nginx` user; it listens on 8080.
# NGINX_IMAGE names another image with that interface (compose:
# TALLY_NGINX_IMAGE, e.g. the stand-in of deploy/docker/standins/).
ARG NGINX_IMAGE=nginx:1.26.3-bookworm
FROM ${NGINX_IMAGE}

COPY deploy/nginx/tally.conf.template /etc/tally/nginx.conf.template
COPY deploy/docker/gateway.sh /usr/local/bin/tally-gateway

ENV TALLY_GATEWAY_LISTEN=8080 \
    TALLY_COMMAND_UPSTREAM=command-api:8081 \
    TALLY_QUERY_UPSTREAM=query-api:8082

EXPOSE 8080

# GET /healthz on the gateway's own port (the template says who answers it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["sh", "-c", "curl -fsS -o /dev/null --max-time 2 \"http://127.0.0.1:${TALLY_GATEWAY_LISTEN##*:}/healthz\""]

# The image's /docker-entrypoint.sh runs its configuration scripts only for
# `nginx ...` commands and otherwise execs this one.
CMD ["/usr/local/bin/tally-gateway"]
