#!/usr/bin/env bash
# Installs the Debian packages the test suite needs. Idempotent: packages
# already present are not reinstalled and apt is only touched when needed.
set -euo pipefail

# python3-nacl and python3-pycryptodome run the StudioML interop test; openssl
# and openssh-client make key files the way operators do (spec §4).
# rabbitmq-server is the real broker the runner tests start a private node of.
# systemd provides systemd-analyze, which verifies and scores deploy/systemd.
# custodia (the real Custodia 0.6 server and custodia-cli), python3-custodia
# and python3-jwcrypto (Custodia's JWE reader) are the peer of the Custodia
# interop tests (internal/testenv/custodia.go).
PKGS=(python3 python3-nacl python3-pycryptodome openssl openssh-client rabbitmq-server systemd custodia python3-custodia python3-jwcrypto sqlite3)

missing=()
for p in "${PKGS[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done

if ((${#missing[@]} == 0)); then
	echo "install-deps: all Debian packages present (${PKGS[*]})"
	exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
