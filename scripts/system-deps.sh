#!/usr/bin/env bash
# Debian packages the test suite uses (idempotent; installs only what is missing; needs root or sudo):
#   mosquitto, mosquitto-clients  a real MQTT broker and mosquitto_sub for the agent/monitor tests
#   chromium                      the real headless browser for the dashboard test
#   qemu-user-static, debootstrap the emulated aarch64 root filesystem of `edgeops verify --target`
#   wrk                           the HTTP load generator of benchmarks/agent_http.py
set -euo pipefail
# With arguments, only those packages (the demo needs only mosquitto).
if [ $# -gt 0 ]; then want=("$@"); else
  want=(mosquitto mosquitto-clients chromium qemu-user-static debootstrap debian-archive-keyring wrk)
fi
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; else
    echo "error: missing Debian packages: ${missing[*]}" >&2
    echo "hint: run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
}
