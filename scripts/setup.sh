#!/usr/bin/env bash
# Idempotent machine + venv setup for Weir (run as root on Debian 12).
#
# Why a script and not only Makefile lines: each step checks before it acts, so
# `make run` / `make test` can call it every time and it costs ~1 s when all is in place.
# It installs only from the project's files: apt packages, kernel-header links for bcc,
# the bpffs mount, the venv (which sees Debian's bcc through one .pth file) and the wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-bpfcc libbpfcc bpfcc-tools linux-headers-amd64 iproute2 iptables nftables
              python3-venv ca-certificates procps)
PYTHON=${PYTHON:-python3}
VENV=.venv
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: Weir loads eBPF programs and creates network namespaces: run as root (sudo make ...)" >&2
  exit 1
fi

# 1. apt packages (skip the slow update when everything is already installed)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. kernel headers for bcc: Debian's 6.1 headers compile fine for the running kernel once
#    /lib/modules/$(uname -r)/{build,source} point at them.
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  [ -n "$hdr" ] || { echo "setup: no kernel headers under /usr/src (apt-get install linux-headers-amd64)" >&2; exit 1; }
  log "linking /lib/modules/$kver/{build,source} -> $hdr"
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$hdr" "/lib/modules/$kver/build"
  ln -sfn "${common:-$hdr}" "/lib/modules/$kver/source"
fi

# 3. bpffs, so maps can be pinned
if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# 4. cgroup2 (the machine mounts it at /sys/fs/cgroup/unified; a pure-v2 host at /sys/fs/cgroup)
if ! grep -q ' cgroup2 ' /proc/mounts; then
  log "mounting cgroup2 at /sys/fs/cgroup/unified"
  mkdir -p /sys/fs/cgroup/unified
  mount -t cgroup2 none /sys/fs/cgroup/unified
fi

# 5. venv + wheels, redone only when pyproject.toml changed
stamp="$VENV/.weir-setup-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ]; then
  log "installing wheels into $VENV (pip install -e '.[dev,bench]')"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[dev,bench]'
  rm -f "$VENV"/.weir-setup-*
  touch "$stamp"
fi

# 6. Debian's bcc, and nothing else from dist-packages, visible in the venv
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$VENV/debian-bcc"
ln -sfn /usr/lib/python3/dist-packages/bcc "$VENV/debian-bcc/bcc"
echo "$(pwd)/$VENV/debian-bcc" > "$site/weir-debian-bcc.pth"
"$VENV/bin/python" -c 'import bcc' || { echo "setup: the venv cannot import Debian's bcc" >&2; exit 1; }
# 7. byte-code for the project's own modules, as a wheel install would leave it: the environment
# may set PYTHONDONTWRITEBYTECODE, and then every process start (each datapath worker and its
# loader children) would recompile ~100 modules (about 0.1 s of CPU each time). Only stale files
# are rewritten, so this is quick when nothing changed.
"$VENV/bin/python" -m compileall -q -j 0 services contracts bench >/dev/null
log "ready: $VENV ($("$VENV/bin/python" --version)), bcc, bpffs, cgroup2"
