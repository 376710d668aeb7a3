# shellcheck shell=bash
# Sourced by the suites that use ../shared/nixpkgs (tests/conformance,
# tests/nixpkgs-eval): unpacks a nixpkgs tarball once, keyed by its hash.
#
#   nixpkgs_tree TARBALL CACHE WHO
#
# sets $key (the first 16 hex of TARBALL's sha256) and $dir
# (CACHE/nixpkgs/$key, whose nixpkgs/ holds the tree); WHO names the caller
# in the message when it unpacks.
nixpkgs_tree() {
    local tarball=$1 cache=$2 who=$3 tmp
    key=$(sha256sum "$tarball" | cut -c1-16)
    dir=$cache/nixpkgs/$key
    if [ ! -d "$dir/nixpkgs" ]; then
        mkdir -p "$dir"
        exec 9>"$cache/nixpkgs/.lock-$key"
        flock 9
        if [ ! -d "$dir/nixpkgs" ]; then
            echo "$who: unpacking $tarball into $dir" >&2
            tmp=$(mktemp -d "$dir/.unpack.XXXXXX")
            tar -xJf "$tarball" -C "$tmp"
            mv "$tmp/nixpkgs" "$dir/nixpkgs"
            rmdir "$tmp"
        fi
        exec 9>&-
    fi
}
