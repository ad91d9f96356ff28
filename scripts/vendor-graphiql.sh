#!/usr/bin/env bash
# Vendor the GraphiQL page's scripts and styles into gateway/assets/graphiql/.
#
# The gateway serves GraphiQL from these files (compiled into the binary), so the
# page works with no outside network. This script fetches the pinned versions
# with `npm pack` (only the npm registry is contacted) and copies the UMD builds
# and their licenses out of the tarballs. init.js and README.md are ours and are
# left alone.
#
# To update: change the versions below, run this script, update the versions in
# gateway/assets/graphiql/README.md, and run `cargo test -p gateway --test graphiql`.
set -euo pipefail

REACT_VERSION=18.3.1
REACT_DOM_VERSION=18.3.1
GRAPHIQL_VERSION=4.1.2

PROG=${0##*/}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=$REPO_ROOT/gateway/assets/graphiql

log() { printf '[%s] %s\n' "$PROG" "$*" >&2; }

command -v npm >/dev/null 2>&1 || { log "npm not found; install Node.js (Debian: apt-get install npm)"; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# unpack NAME VERSION: npm pack NAME@VERSION into $WORK/NAME/package.
unpack() {
    local name=$1 version=$2 tarball
    log "npm pack $name@$version"
    tarball=$(cd "$WORK" && npm pack --silent "$name@$version")
    mkdir -p "$WORK/$name"
    tar -xzf "$WORK/$tarball" -C "$WORK/$name"
}

unpack react "$REACT_VERSION"
unpack react-dom "$REACT_DOM_VERSION"
unpack graphiql "$GRAPHIQL_VERSION"

mkdir -p "$DEST"
install -m 0644 "$WORK/react/package/umd/react.production.min.js" "$DEST/react.production.min.js"
install -m 0644 "$WORK/react/package/LICENSE" "$DEST/LICENSE.react"
install -m 0644 "$WORK/react-dom/package/umd/react-dom.production.min.js" "$DEST/react-dom.production.min.js"
install -m 0644 "$WORK/react-dom/package/LICENSE" "$DEST/LICENSE.react-dom"
install -m 0644 "$WORK/graphiql/package/graphiql.min.js" "$DEST/graphiql.min.js"
install -m 0644 "$WORK/graphiql/package/graphiql.min.css" "$DEST/graphiql.min.css"
install -m 0644 "$WORK/graphiql/package/LICENSE" "$DEST/LICENSE.graphiql"

# The subscriptions of the page need graphql-ws inside the bundle.
if ! grep -q 'graphql-transport-ws' "$DEST/graphiql.min.js"; then
    log "WARNING: graphiql $GRAPHIQL_VERSION's bundle has no graphql-ws client; subscriptions will not work"
fi

(cd "$DEST" && sha256sum react.production.min.js react-dom.production.min.js graphiql.min.js graphiql.min.css)
log "vendored react $REACT_VERSION, react-dom $REACT_DOM_VERSION, graphiql $GRAPHIQL_VERSION into ${DEST#"$REPO_ROOT"/}"
