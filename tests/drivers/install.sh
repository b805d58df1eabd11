#!/usr/bin/env bash
# Installs the drivers tests/drivers.rs runs, at the versions pinned beside
# this script, into DIR (default: target/drivers): a Python venv with
# requirements.txt and node_modules from package-lock.json; pgjdbc is
# Debian's libpostgresql-jdbc-java, run with the machine's Java. A part whose
# pin file is unchanged since the last install is left as it is. Used by
# .ci/run and by the test itself when a part is missing.
#
# usage: install.sh [python|node|java|all] [DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
what="${1:-all}"
dir="${2:-$here/../../target/drivers}"
mkdir -p "$dir"

# fresh DIR PIN TOOL: true when DIR was installed from this PIN file (then
# says so); otherwise checks that TOOL exists and empties DIR for an install.
fresh() {
    local dir="$1" pin="$2" tool="$3"
    if cmp -s "$pin" "$dir/installed-$(basename "$pin")"; then
        echo "up to date: $dir"
        return 0
    fi
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
    rm -rf "$dir"
    return 1
}

install_python() {
    local venv="$dir/venv" pin="$here/requirements.txt"
    fresh "$venv" "$pin" python3 && return
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pin"
    cp "$pin" "$venv/installed-requirements.txt"
    "$venv/bin/python" -c 'import asyncpg, psycopg; print("python drivers: asyncpg", asyncpg.__version__, "psycopg", psycopg.__version__)'
}

install_node() {
    local node="$dir/node" pin="$here/package-lock.json"
    fresh "$node" "$pin" npm && return
    mkdir -p "$node"
    cp "$here/package.json" "$pin" "$node/"
    (cd "$node" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
    cp "$pin" "$node/installed-package-lock.json"
    echo "node drivers: pg $(node -p 'require(process.argv[1]).version' "$node/node_modules/pg/package.json")"
}

install_java() {
    local jar=/usr/share/java/postgresql.jar
    command -v java >/dev/null || { echo "java not found" >&2; exit 1; }
    if [[ ! -f "$jar" ]]; then
        command -v apt-get >/dev/null || { echo "$jar missing and no apt-get" >&2; exit 1; }
        apt-get install -y --no-install-recommends libpostgresql-jdbc-java >/dev/null ||
            { apt-get update >/dev/null && apt-get install -y --no-install-recommends libpostgresql-jdbc-java >/dev/null; }
    fi
    echo "java driver: libpostgresql-jdbc-java $(dpkg-query -W -f '${Version}' libpostgresql-jdbc-java 2>/dev/null), $(java -version 2>&1 | head -n1)"
}

case "$what" in
    python) install_python ;;
    node) install_node ;;
    java) install_java ;;
    all) install_python; install_node; install_java ;;
    *) echo "usage: $0 [python|node|java|all] [DIR]" >&2; exit 2 ;;
esac
