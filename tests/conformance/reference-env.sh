#!/usr/bin/env bash
# Makes (or reuses) what the conformance suite needs to run nixpkgs' own test
# driver, the reference, all of it outside the repo:
#
#   - the nixpkgs tree of ../shared/nixpkgs/*.tar.xz, unpacked (whole, as
#     ../shared/nixpkgs/README.md says) into
#     $NIX_VMTEST_CACHE/nixpkgs/<first 16 hex of the tarball's sha256>/nixpkgs;
#   - a venv with the driver's Python dependencies (requirements.txt, pinned,
#     from PyPI) in $NIX_VMTEST_CACHE/reference-venv/<key>, the key being the
#     hash of requirements.txt, reference_compat.py and the interpreter's
#     version.
#
# NIX_VMTEST_CACHE defaults to /var/cache/nix-vmtest; NIX_VMTEST_SHARED (the
# shared/ folder) to ../shared beside the repo; NIX_VMTEST_REFERENCE_PYTHON
# names the interpreter instead of the choice below.
#
# The interpreter: the newest Python >= 3.13 found (the driver targets 3.13:
# python3.13/python3.14 on PATH, else one under `pyenv root`), else python3
# (>= 3.11, what ipython 9 needs) with reference_compat.py, which gives it
# `warnings.deprecated`, the one 3.13-only name the driver uses.
#
# Prints `driver_src=<nixos/lib/test-driver/src>` and `python=<venv python>`.
# Exits 3, saying so on stderr, when ../shared/nixpkgs is missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=${NIX_VMTEST_SHARED:-$root/../shared}
cache=${NIX_VMTEST_CACHE:-/var/cache/nix-vmtest}

tarballs=("$shared"/nixpkgs/*.tar.xz)
if [ ! -f "${tarballs[0]}" ]; then
    echo "reference-env: ../shared/nixpkgs is missing (no $shared/nixpkgs/*.tar.xz)" >&2
    exit 3
fi
tarball=${tarballs[0]}

# --- nixpkgs, unpacked once per tarball ---------------------------------
# shellcheck source=tests/nixpkgs-tree.sh
. "$here/../nixpkgs-tree.sh"
nixpkgs_tree "$tarball" "$cache" reference-env
src=$dir/nixpkgs/nixos/lib/test-driver/src
if [ ! -f "$src/test_driver/__init__.py" ]; then
    echo "reference-env: $src/test_driver is missing from the nixpkgs tree" >&2
    exit 1
fi

# --- the interpreter ------------------------------------------------------
at_least() { "$1" -c "import sys; sys.exit(0 if sys.version_info >= ($2,) else 1)" 2>/dev/null; }
python=${NIX_VMTEST_REFERENCE_PYTHON:-}
for c in python3.14 python3.13; do
    [ -z "$python" ] || break
    p=$(command -v "$c" 2>/dev/null) || continue
    if at_least "$p" "3, 13"; then python=$p; break; fi
done
if [ -z "$python" ] && command -v pyenv >/dev/null 2>&1; then
    proot=$(pyenv root)
    while read -r p; do
        if at_least "$p" "3, 13"; then python=$p; break; fi
    done < <(ls -d "$proot"/versions/3.*/bin/python3 2>/dev/null | sort -V -r)
fi
if [ -z "$python" ]; then
    python=$(command -v python3)
    if ! at_least "$python" "3, 11"; then
        echo "reference-env: no Python >= 3.11 found (nixpkgs' driver targets 3.13)" >&2
        exit 1
    fi
fi
version=$("$python" -c 'import sys; print(sys.version.split()[0])')

# --- the venv, once per (requirements, compat shim, interpreter) ----------
vkey=$({ cat "$here/requirements.txt" "$here/reference_compat.py"; echo "$python $version"; } | sha256sum | cut -c1-16)
venv=$cache/reference-venv/$vkey
if [ ! -f "$venv/.complete" ]; then
    mkdir -p "$cache/reference-venv"
    exec 9>"$cache/reference-venv/.lock-$vkey"
    flock 9
    if [ ! -f "$venv/.complete" ]; then
        echo "reference-env: making $venv (Python $version, $python)" >&2
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input \
            -r "$here/requirements.txt" >&2
        if ! at_least "$venv/bin/python" "3, 13"; then
            site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
            cp "$here/reference_compat.py" "$site/_nixpkgs_reference_compat.py"
            echo "import _nixpkgs_reference_compat" > "$site/_nixpkgs_reference_compat.pth"
        fi
        PYTHONPATH=$src "$venv/bin/python" -c 'import test_driver, test_driver.driver' >&2
        touch "$venv/.complete"
    fi
    exec 9>&-
fi

echo "driver_src=$src"
echo "python=$venv/bin/python"
