#!/usr/bin/env bash
# The main job, end to end: the NixOS tutorial's minimal test on the Debian
# systemd guest, built with the real nix-build through builtins.vmTest (the
# plugin), in the build sandbox. Prints the vm-test-run-minimal-test path.
#
#   examples/run.sh [minimal|client-server|tiny]
#
# Needs what .ci/setup installs and builds (plugin, driver, guests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
example=${1:-minimal}
guests=$(bash "$root/tests/guests/build.sh" --print-dir)
plugin=${NIX_VMTEST_PLUGIN:-$root/target/release/libnix_vmtest.so}
[ -f "$plugin" ] || { echo "examples/run.sh: $plugin is missing: run .ci/setup (or cargo build --release --features nix-plugin)" >&2; exit 1; }
opts=(
  --option plugin-files "$plugin"
  --option sandbox true
  --option substituters ''
  # Debian's QEMU and Python live outside the store.
  --option extra-sandbox-paths '/usr /lib /lib64 /bin'
)
# Debian's single-user nix-bin has no nixbld group: build as root (still sandboxed).
getent group nixbld >/dev/null || opts+=(--option build-users-group '')
out=$(nix-build "${opts[@]}" "$root/examples/debian/$example.nix" --arg guests "$guests" -o "$root/result-$example")
echo "$out"
echo "--- $out/log (tail)"
tail -n 5 "$out/log"
ls "$out"
