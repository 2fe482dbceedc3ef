"""Rules for deploy/docker/Dockerfile and gateway.Dockerfile that a linter
does not know, checked without a Docker engine.

    check_dockerfile.py ROOT [BIN_DIR]

ROOT is the repository; BIN_DIR (build/bin of a local build) enables the
library check: every shared library that the shipped binaries link must come
from a package the runtime stage installs (or from the base image). The
build here and the image use the same Debian 12 packages, so dpkg -S on this
machine names the packages the image needs.
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from dockerfile_parse import DockerfileParser

ROOT = os.path.abspath(sys.argv[1])
BIN_DIR = sys.argv[2] if len(sys.argv) > 2 else None
errors = []

# The services' binaries (add_executable in services/*/CMakeLists.txt).
SERVICE_BINARIES = {"tally-command-api", "tally-query-api", "tally-worker", "tallyctl"}
# Packages every debian:12-slim image has (priority required).
BASE_PACKAGES = {"libc6", "libgcc-s1", "zlib1g"}


def fail(msg):
    errors.append(msg)


def stages(path):
    """[(from_value, [instructions])] of a Dockerfile, comments dropped; a
    FROM ${ARG} reads as the default of that ARG before the first FROM (the
    image built when nothing overrides it)."""
    parser = DockerfileParser(path=path)
    result = []
    args = {}
    for ins in parser.structure:
        if ins["instruction"] == "COMMENT":
            continue
        if ins["instruction"] == "ARG" and not result:
            name, _, default = ins["value"].partition("=")
            args[name.strip()] = default.strip()
        elif ins["instruction"] == "FROM":
            value = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), ins["value"])
            result.append((value, []))
        elif result:
            result[-1][1].append(ins)
    return result


def image_tag_ok(image):
    if image in stage_names:
        return True
    name, _, tag = image.partition(":")
    return tag and tag != "latest" and "@" not in name


def apt_packages(run_value):
    """Packages named by `apt-get install ...` in a RUN value."""
    pkgs = []
    for m in re.finditer(r"apt-get install ([^&;|]*)", run_value):
        pkgs += [w for w in m.group(1).split() if not w.startswith("-")]
    return pkgs


def dockerignore_patterns():
    path = os.path.join(ROOT, ".dockerignore")
    if not os.path.exists(path):
        return []
    pats = []
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line.lstrip("/"))
    return pats


def ignored(relpath, patterns):
    """Docker's rule, simplified: the last matching pattern wins; a pattern
    matches a path or any of its parent directories."""
    parts = relpath.strip("/").split("/")
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatchcase("/".join(parts[:i]), p) or (
                p.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], p[3:])
            ):
                result = not neg
                break
    return result


def copy_sources(ins):
    words = [w for w in ins["value"].split() if not w.startswith("--")]
    return words[:-1], words[-1]


patterns = dockerignore_patterns()
if not ignored("build", patterns) or not ignored("build/CMakeCache.txt", patterns):
    fail(".dockerignore must exclude build/ (a host CMakeCache.txt breaks the image's cmake)")
for must in (".git", "var", "bench"):
    if not ignored(must, patterns):
        fail(".dockerignore should exclude %s" % must)

# --- the Tally image ---------------------------------------------------------
main_path = os.path.join(ROOT, "deploy/docker/Dockerfile")
st = stages(main_path)
stage_names = {v.split()[-1] for v, _ in st if " AS " in v.upper()}
if len(st) < 2:
    fail("Dockerfile: expected a multi-stage build, found %d stage(s)" % len(st))
for value, _ in st:
    image = value.split()[0]
    if not image_tag_ok(image):
        fail("Dockerfile: FROM %s has no pinned tag (or uses latest)" % image)
    if image not in stage_names and not image.startswith("debian:12"):
        fail("Dockerfile: FROM %s is not Debian 12" % image)

build_ins = st[0][1]
final_value, final = st[-1]
build_pkgs = [p for i in build_ins if i["instruction"] == "RUN" for p in apt_packages(i["value"])]
runtime_pkgs = [p for i in final if i["instruction"] == "RUN" for p in apt_packages(i["value"])]
if any(p.endswith("-dev") or p in ("build-essential", "cmake", "pkg-config") for p in runtime_pkgs):
    fail("Dockerfile: the runtime stage installs build packages: %s" % runtime_pkgs)

users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
if not users:
    fail("Dockerfile: the final stage has no USER (it would run as root)")
elif users[-1].split(":")[0] in ("root", "0"):
    fail("Dockerfile: the final stage runs as root (USER %s)" % users[-1])
if not any(i["instruction"] == "HEALTHCHECK" for i in final):
    fail("Dockerfile: the final stage has no HEALTHCHECK")

env = {}
for i in final:
    if i["instruction"] == "ENV":
        for k, v in re.findall(r"(\w+)=(\S+)", i["value"]):
            env[k] = v
if env.get("TALLY_HTTP_HOST") != "0.0.0.0":
    fail("Dockerfile: ENV TALLY_HTTP_HOST=0.0.0.0 is missing (the binaries default to 127.0.0.1)")

copies = {}
for i in final:
    if i["instruction"] == "COPY":
        srcs, dest = copy_sources(i)
        from_build = "--from=" in i["value"]
        for s in srcs:
            copies[dest] = (s, from_build)
            if not from_build:
                if not os.path.exists(os.path.join(ROOT, s)):
                    fail("Dockerfile: COPY %s: no such path in the repository" % s)
                elif ignored(s.rstrip("/"), patterns):
                    fail("Dockerfile: COPY %s: excluded by .dockerignore" % s)
mig = env.get("TALLY_MIGRATIONS_DIR", "")
if copies.get(mig.rstrip("/") + "/", (None,))[0] != "migrations/":
    fail("Dockerfile: TALLY_MIGRATIONS_DIR=%s is not where migrations/ is copied" % mig)
entry = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
if not entry:
    fail("Dockerfile: no ENTRYPOINT")
else:
    target = json.loads(entry[-1])[0]
    if copies.get(target, (None,))[0] != "deploy/docker/entrypoint.sh":
        fail("Dockerfile: ENTRYPOINT %s is not deploy/docker/entrypoint.sh" % target)
health = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
if health:
    m = re.search(r'CMD \["([^"]+)"', health[-1])
    if not m or copies.get(m.group(1), (None,))[0] != "deploy/docker/healthcheck.sh":
        fail("Dockerfile: HEALTHCHECK does not run deploy/docker/healthcheck.sh")

# The binaries the build stage collects are the ones CMake builds.
build_text = " ".join(i["value"] for i in build_ins if i["instruction"] == "RUN")
copied = set(re.findall(r"build/bin/(tally[\w-]*)", build_text))
if copied != SERVICE_BINARIES:
    fail("Dockerfile: collects %s, expected %s" % (sorted(copied), sorted(SERVICE_BINARIES)))
cmake_targets = set()
for d in os.listdir(os.path.join(ROOT, "services")):
    cml = os.path.join(ROOT, "services", d, "CMakeLists.txt")
    if os.path.exists(cml):
        cmake_targets |= set(re.findall(r"add_executable\(\s*([\w-]+)", open(cml).read()))
if cmake_targets != SERVICE_BINARIES:
    fail("services/*/CMakeLists.txt builds %s, the image ships %s" % (sorted(cmake_targets), sorted(SERVICE_BINARIES)))
if "select-e2e-tests.sh build . /out/tests" not in build_text:
    fail("Dockerfile: the build stage does not collect the e2e programs with select-e2e-tests.sh")
if "ctest" not in build_text or "-L unit" not in build_text:
    fail("Dockerfile: the build stage does not run the unit tests")

# Every pkg-config module CMake asks for comes from a -dev package of the
# build stage (pkg-config --path + dpkg -S on this machine).
modules = set()
cmake_files = [os.path.join(ROOT, "CMakeLists.txt")]
for top in ("common", "services", "tests"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
        cmake_files += [os.path.join(dirpath, f) for f in files if f == "CMakeLists.txt"]
for path in cmake_files:
    if "/tests/fuzz/" in path:  # only with -DTALLY_FUZZ=ON, never in the image
        continue
    for m in re.finditer(r"pkg_check_modules\(\s*\w+\s+([^)]*)\)", open(path).read()):
        modules |= {w for w in m.group(1).split() if w not in ("REQUIRED", "IMPORTED_TARGET", "QUIET")}
have_dpkg = shutil.which("dpkg") and shutil.which("pkg-config")


_owners = {}


def dpkg_owners(paths):
    """Looks up the packages of many paths with one dpkg -S (it is slow)."""
    want = sorted({q for p in paths for q in (p, os.path.realpath(p))} - set(_owners))
    if want:
        out = subprocess.run(["dpkg", "-S"] + want, capture_output=True, text=True).stdout
        for line in out.splitlines():
            pkgs, _, path = line.partition(": ")
            _owners[path.strip()] = pkgs.split(",")[0].split(":")[0].strip()


def dpkg_owner(path):
    dpkg_owners([path])
    return _owners.get(path) or _owners.get(os.path.realpath(path))


if have_dpkg:
    pcfiles = {}
    for mod in sorted(modules):
        r = subprocess.run(["pkg-config", "--path", mod], capture_output=True, text=True)
        if r.returncode != 0:
            fail("pkg-config module %s (CMake) not found on this machine" % mod)
        else:
            pcfiles[mod] = r.stdout.strip()
    dpkg_owners(pcfiles.values())
    for mod, pc in pcfiles.items():
        pkg = dpkg_owner(pc)
        if pkg and pkg not in build_pkgs:
            fail("Dockerfile: CMake needs %s from %s, the build stage does not install it" % (mod, pkg))
else:
    print("note: no dpkg/pkg-config here, build packages not checked")

# Every library the shipped binaries link comes from a runtime package.
if BIN_DIR and have_dpkg and shutil.which("objdump"):
    shipped = [os.path.join(BIN_DIR, b) for b in SERVICE_BINARIES]
    # The e2e programs, chosen by the script the build stage runs.
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(["bash", os.path.join(ROOT, "deploy/docker/select-e2e-tests.sh"),
                            os.path.dirname(os.path.abspath(BIN_DIR)), ROOT, out],
                           capture_output=True, text=True)
        print(r.stdout, end="")
        e2e = sorted(os.listdir(out))
    if r.returncode != 0:
        fail("select-e2e-tests.sh failed: %s" % r.stderr.strip())
    elif not e2e:
        fail("select-e2e-tests.sh ships no test program: the image's e2e mode would have nothing to run")
    shipped += [os.path.join(BIN_DIR, t) for t in e2e]
    ldcache = {}
    for line in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout.splitlines():
        m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if m:
            ldcache.setdefault(m.group(1), m.group(3))
    needed = {}
    for b in shipped:
        if os.path.exists(b):
            out = subprocess.run(["objdump", "-p", b], capture_output=True, text=True).stdout
            needed[b] = re.findall(r"NEEDED\s+(\S+)", out)
    dpkg_owners(ldcache[lib] for libs in needed.values() for lib in libs if lib in ldcache)
    for b in shipped:
        if not os.path.exists(b):
            fail("%s not built (build the project first)" % b)
            continue
        for lib in needed[b]:
            path = ldcache.get(lib)
            pkg = dpkg_owner(path) if path else None
            if pkg is None:
                fail("%s links %s, which no Debian package on this machine provides" % (os.path.basename(b), lib))
            elif pkg not in runtime_pkgs and pkg not in BASE_PACKAGES:
                fail("Dockerfile: %s links %s from %s, the runtime stage does not install it"
                     % (os.path.basename(b), lib, pkg))
elif BIN_DIR:
    print("note: no dpkg/objdump here, runtime libraries not checked")

# --- the gateway image -------------------------------------------------------
gw = stages(os.path.join(ROOT, "deploy/docker/gateway.Dockerfile"))
image = gw[-1][0].split()[0]
if not image.startswith("nginx:") or not image_tag_ok(image) or "bookworm" not in image:
    fail("gateway.Dockerfile: FROM %s, expected a pinned nginx:<version>-bookworm" % image)
gw_final = gw[-1][1]
for i in gw_final:
    if i["instruction"] == "COPY":
        srcs, _ = copy_sources(i)
        for s in srcs:
            if not os.path.exists(os.path.join(ROOT, s)):
                fail("gateway.Dockerfile: COPY %s: no such path" % s)
            elif ignored(s, patterns):
                fail("gateway.Dockerfile: COPY %s: excluded by .dockerignore" % s)
if not any(i["instruction"] == "HEALTHCHECK" for i in gw_final):
    fail("gateway.Dockerfile: no HEALTHCHECK")

for e in errors:
    print("FAIL:", e)
if errors:
    sys.exit(1)
print("Dockerfiles: %d build packages, %d runtime packages, %d pkg-config modules checked; ok"
      % (len(build_pkgs), len(runtime_pkgs), len(modules)))
