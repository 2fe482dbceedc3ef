"""Rules for compose.yaml that the compose-spec schema does not express,
checked against the sources (no Docker engine needed).

    check_compose.py ROOT

* the services, profiles, images and named volumes the stack needs;
* scaling: no container_name anywhere, no published port on the worker;
* depends_on: targets exist, service_healthy only on services with a
  health check, the Tally services wait for migrate to complete;
* every ${VAR} has a default;
* every TALLY_* setting given to a Tally container is read by what runs
  there (the binaries' settings tables in services/*/, the entrypoint, the
  test support), and the required ones (no default) are given;
* Kafka's image version equals deploy/kafka/pom.xml's, PostgreSQL is 15;
* the gateway's upstreams match the APIs' ports, and gateway.sh renders
  exactly the variables of deploy/nginx/tally.conf.template.
"""

import glob
import os
import re
import sys

import yaml

ROOT = os.path.abspath(sys.argv[1])
errors = []


def fail(msg):
    errors.append(msg)


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


raw = read("compose.yaml")

# Interpolation: every ${VAR} needs a default (${VAR:-x} or ${VAR-x}).
for m in re.finditer(r"(?<!\$)\$\{([^}]*)\}", raw):
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*:?-.*", m.group(1)):
        fail("compose.yaml: ${%s} has no default" % m.group(1))


def interpolate(value):
    """Compose's interpolation with an empty environment: the defaults."""
    if isinstance(value, str):
        value = re.sub(r"(?<!\$)\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


doc = interpolate(yaml.safe_load(raw))
services = doc.get("services", {})
MODES = {"command-api", "query-api", "worker", "tallyctl", "migrate", "e2e"}
TALLY_SERVICES = {"migrate", "command-api", "query-api", "worker", "tools", "e2e"}
for name in ("kafka", "postgres", "gateway") + tuple(sorted(TALLY_SERVICES)):
    if name not in services:
        fail("compose.yaml: service %s is missing" % name)

# --- what each mode reads ----------------------------------------------------
# (a row may sit in a macro: line continuations count as white space)
SETTING = re.compile(r'\{[\s\\]*"[a-z-]+",\s*"(TALLY_[A-Z0-9_]+)",\s*TLY_CONFIG_\w+,\s*(NULL|"[^"]*")')


def settings(*dirs):
    found = {}
    for d in dirs:
        paths = [os.path.join(ROOT, d)] if d.endswith(".h") else glob.glob(os.path.join(ROOT, d, "*.c"))
        for path in paths:
            for var, default in SETTING.findall(open(path).read()):
                found[var] = default != "NULL"
    return found


# Both APIs embed the guard's settings (rate limits, load shedding) and the
# consistency-token secret from one header each.
GUARD = "common/include/tally/guard.h"
CONSISTENCY = "common/include/tally/consistency.h"


binary_settings = {
    "command-api": settings("services/command-api", GUARD, CONSISTENCY),
    "query-api": settings("services/query-api", GUARD, CONSISTENCY),
    "worker": settings("services/worker"),
    "tallyctl": settings("services/tallyctl"),
}
for mode, table in binary_settings.items():
    if "TALLY_PG_DSN" not in table:
        fail("could not read the settings table of %s (no TALLY_PG_DSN found)" % mode)
entrypoint = read("deploy/docker/entrypoint.sh")
entry_vars = set(re.findall(r"\b(TALLY_[A-Z0-9_]+)\b", entrypoint))
test_vars = set()
for path in glob.glob(os.path.join(ROOT, "tests/*/*.c")):
    test_vars |= set(re.findall(r'tly_test_env\("(TALLY_[A-Z0-9_]+)"\)', open(path).read()))
test_vars |= {"TALLY_URL", "TALLY_API_KEY"}  # tests/support reads these
readers = {
    "command-api": set(binary_settings["command-api"]),
    "query-api": set(binary_settings["query-api"]),
    "worker": set(binary_settings["worker"]),
    "tallyctl": set(binary_settings["tallyctl"]),
    "migrate": set(binary_settings["tallyctl"]) | entry_vars,
    "e2e": set(binary_settings["tallyctl"]) | entry_vars | test_vars,
}
# The shared block (x-tally-env) goes to every Tally container: each of its
# settings must be read by at least one of them; a service's own additions
# must be read by that service.
shared = set(yaml.safe_load(raw).get("x-tally-env", {}))
everyone = set().union(*readers.values())
for var in sorted(shared):
    if var.startswith("TALLY_") and var not in everyone:
        fail("compose.yaml: x-tally-env sets %s, which nothing reads" % var)

for name in sorted(TALLY_SERVICES & set(services)):
    svc = services[name]
    cmd = svc.get("command") or []
    mode = cmd[0] if cmd else None
    if mode not in MODES:
        fail("compose.yaml: %s runs %r, not an entrypoint mode (%s)" % (name, mode, ", ".join(sorted(MODES))))
        continue
    if not re.search(r"^%s\)" % re.escape(mode), entrypoint, re.M):
        fail("deploy/docker/entrypoint.sh has no mode %s (used by %s)" % (mode, name))
    if not svc.get("image", "").startswith("tally"):
        fail("compose.yaml: %s does not use the Tally image" % name)
    if svc.get("image") != services.get("migrate", {}).get("image"):
        fail("compose.yaml: %s names another image than migrate, which builds it" % name)
    if ("build" in svc) != (name == "migrate"):
        fail("compose.yaml: %s: only migrate builds the Tally image (each build would run once per service)" % name)
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    for var in env:
        if var.startswith("TALLY_") and var not in shared and var not in readers[mode]:
            fail("compose.yaml: %s sets %s, which %s does not read" % (name, var, mode))
    if mode in binary_settings:
        for var, has_default in binary_settings[mode].items():
            if not has_default and var not in env:
                fail("compose.yaml: %s lacks %s, which %s requires" % (name, var, mode))
    if mode in ("migrate", "e2e") and "TALLY_PG_DSN" not in env:
        fail("compose.yaml: %s lacks TALLY_PG_DSN (tallyctl needs it)" % name)

# --- scaling, ports, dependencies, health ------------------------------------
for name, svc in services.items():
    if "container_name" in svc:
        fail("compose.yaml: %s has a container_name (it could not be scaled)" % name)
# A scalable service may publish a port only to a free host port of each
# container ("[ADDRESS:]:CONTAINER_PORT", no host port).
for p in services.get("worker", {}).get("ports", []):
    parts = str(p).split(":")
    if len(parts) > 1 and parts[-2] != "":
        fail("compose.yaml: worker publishes %s to a fixed host port (--scale worker=3 would collide)" % p)


def has_health(svc):
    hc = svc.get("healthcheck")
    return hc is not None and not hc.get("disable") and hc.get("test") not in (["NONE"], "NONE")


for name, svc in services.items():
    deps = svc.get("depends_on", {})
    if isinstance(deps, list):
        deps = {d: {"condition": "service_started"} for d in deps}
    for dep, spec in deps.items():
        if dep not in services:
            fail("compose.yaml: %s depends on unknown service %s" % (name, dep))
            continue
        cond = (spec or {}).get("condition", "service_started")
        if cond == "service_healthy" and not has_health(services[dep]):
            # The Tally image has a HEALTHCHECK of its own.
            if not (dep in TALLY_SERVICES and "healthcheck" not in services[dep]):
                fail("compose.yaml: %s waits for %s to be healthy, but it has no health check" % (name, dep))
        if dep == "migrate" and cond != "service_completed_successfully":
            fail("compose.yaml: %s must wait for migrate with service_completed_successfully" % name)
        if services[dep].get("profiles") and not svc.get("profiles"):
            fail("compose.yaml: %s (no profile) depends on %s, which has a profile" % (name, dep))
for name in ("command-api", "query-api", "worker"):
    deps = services.get(name, {}).get("depends_on", {})
    if (deps.get("migrate") or {}).get("condition") != "service_completed_successfully":
        fail("compose.yaml: %s must wait for migrate to complete" % name)
    if not has_health(services.get(name, {})):
        fail("compose.yaml: %s has no health check" % name)
mig = services.get("migrate", {}).get("depends_on", {})
for dep in ("kafka", "postgres"):
    if (mig.get(dep) or {}).get("condition") != "service_healthy":
        fail("compose.yaml: migrate must wait for %s to be healthy" % dep)
    if not has_health(services.get(dep, {})):
        fail("compose.yaml: %s has no health check" % dep)
if "test" not in (services.get("e2e", {}).get("profiles") or []):
    fail("compose.yaml: e2e is not in the test profile")
for name in ("migrate", "command-api", "query-api", "worker", "kafka", "postgres", "gateway"):
    if services.get(name, {}).get("profiles"):
        fail("compose.yaml: %s must run without a profile" % name)

# --- images and volumes -------------------------------------------------------
kafka_image = services.get("kafka", {}).get("image", "")
pom = re.search(r"<kafka.version>([^<]+)</kafka.version>", read("deploy/kafka/pom.xml"))
if not re.fullmatch(r"apache/kafka:3\.9\.\d+", kafka_image):
    fail("compose.yaml: kafka image %s is not apache/kafka:3.9.x" % kafka_image)
elif pom and kafka_image.split(":")[1] != pom.group(1):
    fail("compose.yaml: kafka %s differs from deploy/kafka/pom.xml's %s" % (kafka_image, pom.group(1)))
kenv = services.get("kafka", {}).get("environment", {})
expect = {"KAFKA_PROCESS_ROLES": "broker,controller", "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
          "KAFKA_LOG_RETENTION_MS": "-1", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
          "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1"}
for k, v in expect.items():
    if str(kenv.get(k)) != v:
        fail("compose.yaml: kafka %s=%s, expected %s" % (k, kenv.get(k), v))
for k in ("KAFKA_NODE_ID", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_LISTENERS", "CLUSTER_ID", "KAFKA_LOG_DIRS"):
    if k not in kenv:
        fail("compose.yaml: kafka lacks %s" % k)
if not re.fullmatch(r"postgres:15([.-].*)?", services.get("postgres", {}).get("image", "")):
    fail("compose.yaml: postgres image is not postgres:15")
for name, svc in services.items():
    img = svc.get("image", "")
    if img.endswith(":latest") or (":" not in img.split("/")[-1]):
        fail("compose.yaml: %s image %r has no pinned tag" % (name, img))
volumes = set(doc.get("volumes") or {})
for name, path in (("kafka", kenv.get("KAFKA_LOG_DIRS", "/var/lib/kafka/data")),
                   ("postgres", "/var/lib/postgresql/data")):
    mounts = [v for v in services.get(name, {}).get("volumes", []) if isinstance(v, str)]
    named = [v.split(":")[0] for v in mounts if v.split(":")[1:2] == [path]]
    if not named or named[0] not in volumes:
        fail("compose.yaml: %s keeps %s in no named volume" % (name, path))

# --- gateway ---------------------------------------------------------------------
gw = services.get("gateway", {})
genv = gw.get("environment", {})
ports = {n: str(services.get(n, {}).get("environment", {}).get("TALLY_HTTP_PORT")) for n in ("command-api", "query-api")}
if genv.get("TALLY_COMMAND_UPSTREAM") != "command-api:%s" % ports["command-api"]:
    fail("compose.yaml: gateway TALLY_COMMAND_UPSTREAM=%s, command-api listens on %s"
         % (genv.get("TALLY_COMMAND_UPSTREAM"), ports["command-api"]))
if genv.get("TALLY_QUERY_UPSTREAM") != "query-api:%s" % ports["query-api"]:
    fail("compose.yaml: gateway TALLY_QUERY_UPSTREAM=%s, query-api listens on %s"
         % (genv.get("TALLY_QUERY_UPSTREAM"), ports["query-api"]))
listen = str(genv.get("TALLY_GATEWAY_LISTEN", ""))
published = [str(p) for p in gw.get("ports", [])]
if not any(p.endswith(":" + listen.split(":")[-1]) for p in published):
    fail("compose.yaml: gateway publishes %s, but listens on %s" % (published, listen))
if "${TALLY_GATEWAY_PORT:-8080}" not in raw:
    fail("compose.yaml: the gateway's host port is not ${TALLY_GATEWAY_PORT:-8080}")
template_vars = set(re.findall(r"\$\{(TALLY_[A-Z_]+)\}", read("deploy/nginx/tally.conf.template")))
gateway_sh = read("deploy/docker/gateway.sh")
m = re.search(r"envsubst '([^']*)'", gateway_sh)
rendered = set(re.findall(r"\$\{(TALLY_[A-Z_]+)\}", m.group(1))) if m else set()
if rendered != template_vars:
    fail("gateway.sh renders %s, the template uses %s" % (sorted(rendered), sorted(template_vars)))
e2e_url = services.get("e2e", {}).get("environment", {}).get("TALLY_URL", "")
if e2e_url != "http://gateway:%s" % listen.split(":")[-1]:
    fail("compose.yaml: e2e TALLY_URL=%s is not the gateway" % e2e_url)

for e in errors:
    print("FAIL:", e)
if errors:
    sys.exit(1)
print("compose.yaml: %d services, %d settings tables read; ok" % (len(services), len(binary_settings)))
