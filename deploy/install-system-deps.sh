#!/usr/bin/env bash
# Installs the Debian packages capml's stack needs, only those missing (idempotent, quiet when all present).
#   libxc-dev libopenblas-dev libfftw3-dev : GPAW's C extension (built by pip with CC=g++)
#   gpaw-data                              : PAW datasets (PBE, LDA, GLLBSC) in /usr/share/gpaw-setups
#   g++                                    : GPAW's C sources compile as C++
#   chromium                               : the real browser the dashboard tests drive with Playwright
set -euo pipefail
packages=(libxc-dev libopenblas-dev libfftw3-dev gpaw-data g++ chromium fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "capml: installing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "capml: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
