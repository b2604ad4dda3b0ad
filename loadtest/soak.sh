#!/usr/bin/env bash
# Crash-safety soak (issue 6): our master under 8 writers' mixed RESERVE / ACTIVATE /
# DEACTIVATE / DELETE load, stopped at a random moment and restarted, ROUNDS times with
# SIGKILL and TERM_ROUNDS times with SIGTERM; after each restart every acknowledged write
# must be there and nothing half-applied (mupdate-load soak says how it checks). Prints one
# JSON line per signal and fails on the first lost or half-applied write.
# Usage: [ROUNDS=100] [TERM_ROUNDS=30] [WRITERS=8] loadtest/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p mupdate -p loadtest
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
load=target/release/mupdate-load
"$load" soak --bin target/release/mupdate --workdir "$work/kill" \
    --rounds "${ROUNDS:-100}" --writers "${WRITERS:-8}" --signal kill
"$load" soak --bin target/release/mupdate --workdir "$work/term" \
    --rounds "${TERM_ROUNDS:-30}" --writers "${WRITERS:-8}" --signal term
