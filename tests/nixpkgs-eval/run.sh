#!/usr/bin/env bash
# NixOS tests of a real nixpkgs tree (../shared/nixpkgs) evaluated upstream
# and with nix-vmtest's test module, compared derivation by derivation
# (tests/nixpkgs-eval/README.md). Evaluation only: nothing is built.
#
#   tests/nixpkgs-eval/run.sh                 every case
#   tests/nixpkgs-eval/run.sh --list          the cases
#   tests/nixpkgs-eval/run.sh 'CASE' ...      some of them
#
# The tree is unpacked once, outside the repo, into
# ${NIX_VMTEST_CACHE:-/var/cache/nix-vmtest}/nixpkgs/<first 16 hex of the
# tarball's sha256>/nixpkgs (as tests/conformance/reference-env.sh does).
# It needs Nix >= 2.18: Nix ${NIX_VMTEST_EVAL_NIX:-2.35.2} built from source
# (.ci/setup, .ci/build-nix), run through .ci/with-nix with a store of its
# own. Without ../shared/nixpkgs it says it did not run, and passes.
# Prints "nixpkgs-eval: N passed, N failed" last.
#
# Like a test derivation in the Nix store, a full run that passed is not
# made again for the same inputs: its report is kept in
# $cache/nixpkgs-eval/<key>.log, the key hashing the tarball, the Nix
# version and every file the evaluation reads from this checkout (nix/,
# tests/nixpkgs-eval/, examples/nixos/, flake.nix, Cargo.toml, Cargo.lock,
# tests/nix-lib/fixtures/; not *.md); it is shown again, saying so.
# NIX_VMTEST_EVAL_FRESH=1 evaluates anyway.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=${NIX_VMTEST_SHARED:-$root/../shared}
cache=${NIX_VMTEST_CACHE:-/var/cache/nix-vmtest}
nix_version=${NIX_VMTEST_EVAL_NIX:-2.35.2}
start=$(date +%s)

tarballs=("$shared"/nixpkgs/*.tar.xz)
if [ ! -f "${tarballs[0]}" ] || [ ! -f "$shared/nixpkgs/no-hackage.nix" ]; then
    echo "nixpkgs-eval: did not run: ../shared/nixpkgs is missing (no $shared/nixpkgs/*.tar.xz)"
    exit 0
fi
tarball=${tarballs[0]}

# --- the tree, unpacked once per tarball ----------------------------------
# shellcheck source=tests/nixpkgs-tree.sh
. "$here/../nixpkgs-tree.sh"
nixpkgs_tree "$tarball" "$cache" nixpkgs-eval
nixpkgs=$dir/nixpkgs

# .ci/with-nix sees the checkout, /tmp and the cache, not ../shared: the
# overlay goes into a work directory under /tmp.
work=$(mktemp -d /tmp/nix-vmtest-nixpkgs-eval.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp "$shared/nixpkgs/no-hackage.nix" "$work/no-hackage.nix"

# The plugin is not needed: do not build it.
with_nix() { NIX_VMTEST_NO_BUILD=1 bash "$root/.ci/with-nix" "$nix_version" "$@"; }

if ! with_nix nix-instantiate --version >/dev/null 2>"$work/nix.err"; then
    echo "nixpkgs-eval: Nix $nix_version is not available (.ci/setup builds it; .ci/build-nix $nix_version):"
    tail -n 5 "$work/nix.err"
    echo "nixpkgs-eval: 0 passed, 1 failed"
    exit 1
fi
echo "nixpkgs-eval: nixpkgs $(cat "$nixpkgs/lib/.version") at $nixpkgs, Nix $nix_version"

if [ "${1:-}" = --list ]; then
    with_nix python3 "$here/compare.py" --nixpkgs "$nixpkgs" --overlay "$work/no-hackage.nix" --list
    exit 0
fi

# A passed full run for these inputs?
inputs_key=$( {
    echo "$key $nix_version"
    sha256sum "$shared/nixpkgs/no-hackage.nix" | cut -d' ' -f1
    cd "$root" && find nix tests/nixpkgs-eval examples/nixos tests/nix-lib/fixtures flake.nix Cargo.toml Cargo.lock \
        -type f -not -name '*.pyc' -not -name '*.md' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
report=$cache/nixpkgs-eval/$inputs_key.log
if [ $# -eq 0 ] && [ "${NIX_VMTEST_EVAL_FRESH:-0}" != 1 ] && [ -f "$report" ]; then
    cat "$report"
    echo
    echo "nixpkgs-eval: the report above is of $(date -r "$report" '+%F %T'), for the same inputs"
    echo "nixpkgs-eval: (key $inputs_key; NIX_VMTEST_EVAL_FRESH=1 evaluates again)"
    tail -n 1 "$report"
    exit 0
fi

rc=0
with_nix python3 "$here/compare.py" --nixpkgs "$nixpkgs" --overlay "$work/no-hackage.nix" "$@" \
    | tee "$work/compare.out" || rc=1
passed=$(sed -n 's/^nixpkgs-eval: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$work/compare.out")
failed=$(sed -n 's/^nixpkgs-eval: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$work/compare.out")
passed=${passed:-0} failed=${failed:-1}

# Refused at evaluation, with a message naming the option.
: > "$work/refusals.out"
say() { printf '%s\n' "$@" | tee -a "$work/refusals.out"; }
if [ $# -eq 0 ]; then
    say "" "== refused at evaluation, with a message that says so"
    refusal() { # WHICH MESSAGE
        local out
        if out=$(with_nix nix-instantiate --option substituters '' --eval --read-write-mode \
            "$here/refusals.nix" --arg nixpkgs "$nixpkgs" --arg overlays "[ (import $work/no-hackage.nix) ]" \
            --argstr which "$1" 2>&1); then
            say "FAIL $1: evaluated, but must be refused"
            failed=$((failed + 1))
        elif printf '%s' "$out" | grep -qF -- "$2"; then
            say "ok   $1: $(printf '%s\n' "$out" | grep -F -m1 -- "$2" | sed 's/^[ -]*//')"
            passed=$((passed + 1))
        else
            say "FAIL $1: refused, but the error does not say: $2"
            printf '%s\n' "$out" | grep -v '^ *\(at\|…\)' | tail -n 8 | sed 's/^/     /'
            failed=$((failed + 1))
        fi
    }
    refusal containers 'nix-vmtest: `containers` (systemd-nspawn machines) are not supported'
    refusal sshBackdoor 'nix-vmtest: `sshBackdoor` (SSH into the VMs over vsock) is not supported'
    refusal imageClash 'nix-vmtest: these names are both in `imageNodes` and `nodes`: m'
    refusal snapshotNineP 'nix-vmtest: `snapshots.<node> = true` for a node that mounts the host'"'"'s Nix store over 9p (m)'
    refusal snapshotUnknown 'nix-vmtest: snapshots.n: there is no node `n` (the nodes are m).'
fi

echo
echo "nixpkgs-eval: took $(( $(date +%s) - start )) s"
echo "nixpkgs-eval: $passed passed, $failed failed"
if [ "$failed" -eq 0 ] && [ "$rc" -eq 0 ]; then
    if [ $# -eq 0 ]; then
        mkdir -p "$(dirname "$report")"
        { cat "$work/compare.out" "$work/refusals.out"
          echo; echo "nixpkgs-eval: took $(( $(date +%s) - start )) s"
          echo "nixpkgs-eval: $passed passed, $failed failed"; } > "$report.tmp" && mv "$report.tmp" "$report"
    fi
    exit 0
fi
exit 1
