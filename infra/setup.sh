#!/usr/bin/env bash
# Installs everything the pipeline needs into this checkout, idempotently:
#   .venv/ with the pinned Python packages (pyspark, delta-rs, duckdb, the embedded MongoDB ...),
#   a Java 17+ runtime for Spark and Kafka (Debian's openjdk-17-jre-headless) when none is present,
#   and the jars of every pinned pom under infra/jars/ (Apache Kafka's broker; Spark's Kafka source and
#   delta-spark for the streaming job), fetched from Maven Central
#   with `mvn dependency:copy-dependencies` into .tools/jars/<name>/; nothing is downloaded at run time.
# With --test (make test, lint, chaos) it adds the test tools of requirements-test.txt to the same venv.
# Re-running it is cheap: the venv is rebuilt only when requirements.txt or pyproject.toml change (the test
# tools when requirements-test.txt does), a jar folder only when its pom changes.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
VENV=.venv
STAMP="$VENV/.requirements.sha256"
TEST_STAMP="$VENV/.requirements-test.sha256"

log() { printf '[setup] %s\n' "$*"; }

if ! command -v java >/dev/null 2>&1; then
  log "no java found: installing Debian's openjdk-17-jre-headless (Spark needs Java 17+)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
if [ "${java_major:-0}" -lt 17 ]; then
  echo "[setup] error: Spark 4 needs Java 17 or newer, found ${java_major:-none}; install openjdk-17-jre-headless" >&2
  exit 1
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "[setup] error: $PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

# Jars from Maven Central: one folder per pinned pom, fetched once (a stamp holds the pom's hash) into a
# temporary folder and moved into place only when complete, so an interrupted fetch is simply done again.
# A second argument names a folder of jars already on the classpath (pyspark's own): a fetched jar of the same
# artifact, whatever its version, is left out, so the classpath never holds two versions of one library.
fetch_jars() {
  local name=$1 provided=${2:-} pom=infra/jars/$1/pom.xml dest=.tools/jars/$1
  local want; want=$(sha256sum "$pom" | cut -d' ' -f1)
  if [ -f "$dest/.pom.sha256" ] && [ "$(cat "$dest/.pom.sha256")" = "$want" ]; then
    log "jars up to date ($dest)"
    return
  fi
  if ! command -v mvn >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    log "no mvn found: installing Debian's maven (the jars under infra/jars/ come from Maven Central)"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq maven >/dev/null
  fi
  log "fetching the $name jars from Maven Central ($pom; once)"
  mkdir -p .tools/jars
  rm -rf "$dest.partial"
  if ! mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$PWD/$dest.partial" >".tools/jars/$name.mvn.log" 2>&1; then
    local missing
    missing=$(grep -oE "(Could not (resolve|find|transfer) [a-z]+|artifact) [A-Za-z0-9_.:-]+:[0-9][A-Za-z0-9_.-]*" \
      ".tools/jars/$name.mvn.log" | head -1 | awk '{print $NF}')
    echo "[setup] error: could not fetch ${missing:-the $name jars} from Maven Central ($pom); check that" \
      "Maven Central is reachable (proxy or mirror in ~/.m2/settings.xml) and run make setup again;" \
      "mvn's output: .tools/jars/$name.mvn.log" >&2
    exit 1
  fi
  if [ -n "$provided" ]; then
    local jar artifact
    for jar in "$dest.partial"/*.jar; do
      artifact=$(basename "$jar" .jar | sed -E 's/-[0-9][A-Za-z0-9._-]*$//')
      if compgen -G "$provided/$artifact-[0-9]*.jar" >/dev/null; then rm "$jar"; fi
    done
  fi
  rm -rf "$dest" && mv "$dest.partial" "$dest"
  echo "$want" >"$dest/.pom.sha256"
  log "$name jars: $(ls "$dest"/*.jar | wc -l) in $dest ($(du -sh "$dest" | cut -f1))"
}
fetch_jars kafka

# Prometheus and promtool (Debian's prometheus 2.42, static binaries) for `make monitoring` and the alert-rule
# tests: unpacked into .tools/ (not installed as a system service); one on PATH is used instead when present.
if ! command -v promtool >/dev/null 2>&1 && [ ! -x .tools/prometheus/usr/bin/promtool ]; then
  log "unpacking Debian's prometheus into .tools/prometheus (Prometheus and promtool)"
  mkdir -p .tools/cache
  if ! ls .tools/cache/prometheus_*.deb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    (cd .tools/cache && apt-get download -qq prometheus 2>/dev/null) \
      || { $SUDO apt-get update -qq && (cd .tools/cache && apt-get download -qq prometheus 2>/dev/null); } \
      || log "warning: could not download Debian's prometheus; monitoring and its tests need it (or one on PATH)"
  fi
  if ls .tools/cache/prometheus_*.deb >/dev/null 2>&1; then
    rm -rf .tools/prometheus.partial
    dpkg-deb -x .tools/cache/prometheus_*.deb .tools/prometheus.partial
    rm -rf .tools/prometheus && mv .tools/prometheus.partial .tools/prometheus
  fi
fi

want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  log "python environment up to date ($VENV)"
else
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  log "installing pinned packages (first time: ~2 min, pyspark is built from source once and cached by pip)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$STAMP"
  log "done: $("$VENV/bin/python" -c 'import pyspark, deltalake, duckdb; print("pyspark", pyspark.__version__, "deltalake", deltalake.__version__, "duckdb", duckdb.__version__)')"
  rm -f .tools/jars/spark/.pom.sha256  # a new pyspark: its own jars decide which fetched ones are left out
fi

# The test tools (pytest, mongomock, ruff ...) only for `setup.sh --test` (make test, lint, chaos).
if [ "${1:-}" = "--test" ]; then
  want_test=$(cat requirements-test.txt | sha256sum | cut -d' ' -f1)
  if [ -f "$TEST_STAMP" ] && [ "$(cat "$TEST_STAMP")" = "$want_test" ]; then
    log "test tools up to date"
  else
    log "installing the test tools (requirements-test.txt)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-test.txt
    echo "$want_test" > "$TEST_STAMP"
  fi
fi

# Spark's Kafka source and delta-spark for the streaming job (after the venv: pyspark's jars are left out).
fetch_jars spark "$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
