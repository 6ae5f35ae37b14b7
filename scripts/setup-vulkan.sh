#!/usr/bin/env bash
# Installs a Vulkan driver for the wgpu backend's tests when none is present: Debian's Mesa
# lavapipe (a software Vulkan 1.3 GPU on the CPU) and the Vulkan loader. Idempotent; needs root
# or sudo, and Debian's package registry.
set -euo pipefail
if ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && ldconfig -p | grep -q 'libvulkan\.so\.1'; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "installing mesa-vulkan-drivers and libvulkan1 (lavapipe, for the wgpu kernel tests)" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >&2
