#!/usr/bin/env bash
# Builds the nix-vmtest test guests (see README.md) into
#   ${NIX_VMTEST_CACHE:-/var/cache/nix-vmtest}/guests/<key>/
# where <key> hashes the recipe (the files of this directory, the kernel
# package and busybox version). An existing build of the same recipe is reused.
#
#   build.sh              build (or reuse); the last line printed is the dir
#   build.sh --print-dir  print the dir; exit 1 if it is not built
#
# Needs root, debootstrap, busybox-static, cpio, kmod, e2fsprogs, qemu-utils,
# apt (the kernel package is fetched with `apt-get download`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${NIX_VMTEST_CACHE:-/var/cache/nix-vmtest}
mirror=${NIX_VMTEST_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
packages=systemd,systemd-sysv,udev,dbus,libpam-systemd,iproute2,iputils-ping,kmod,procps,nginx-light,curl,netcat-openbsd,sudo

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: $*" >&2; exit 1; }

# The kernel: Debian's generic amd64 kernel (the cloud kernel has no 9p, which
# the shared directory needs). NIX_VMTEST_KERNEL_DEB may name a .deb to use.
kernel_deb=${NIX_VMTEST_KERNEL_DEB:-}
if [ -n "$kernel_deb" ]; then
    kernel_id=$(dpkg-deb -f "$kernel_deb" Package Version | tr '\n' ' ')
else
    dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null | sed -n 's/^Depends: *//p' | head -n1)
    kernel_pkg=$(echo "$dep" | sed -n 's/^\(linux-image-[^ ,]*\) *(= *\([^)]*\)).*/\1/p')
    kernel_ver=$(echo "$dep" | sed -n 's/^\(linux-image-[^ ,]*\) *(= *\([^)]*\)).*/\2/p')
    [ -n "$kernel_pkg" ] && [ -n "$kernel_ver" ] \
        || die "cannot resolve linux-image-amd64 with apt-cache (run apt-get update?)"
    kernel_id="$kernel_pkg $kernel_ver"
fi
busybox_ver=$(dpkg-query -W -f '${Version}' busybox-static 2>/dev/null) || die "busybox-static is not installed"

recipe() {
    echo "suite $suite"
    echo "packages $packages"
    echo "kernel $kernel_id"
    echo "busybox-static $busybox_ver"
    (cd "$here" && find . -type f ! -name README.md ! -name '*~' | LC_ALL=C sort | xargs -d '\n' sha256sum)
}
key=$(recipe | sha256sum | cut -c1-16)
dir=$cache/guests/$key

if [ "${1:-}" = --print-dir ]; then
    if [ -f "$dir/recipe.txt" ]; then echo "$dir"; exit 0; fi
    echo "guests not built: run tests/guests/build.sh" >&2
    exit 1
elif [ $# -gt 0 ]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi

if [ -f "$dir/recipe.txt" ]; then
    log "reusing $dir"
    echo "$dir"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, device nodes)"
mkdir -p "$cache/guests" "$cache/downloads"
exec 9> "$cache/guests/.lock"
flock 9
if [ -f "$dir/recipe.txt" ]; then
    log "reusing $dir (built meanwhile)"
    echo "$dir"
    exit 0
fi

start=$(date +%s)
tmp=$(mktemp -d "$cache/guests/.build-$key.XXXXXX")
cleanup() {
    # debootstrap may have left /proc or /sys mounted in the root it was making
    local m
    for m in $(awk -v t="$tmp/" 'index($2, t) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
out=$tmp/out work=$tmp/work
mkdir -p "$out/tiny" "$out/systemd" "$work"

# --- kernel --------------------------------------------------------------
if [ -z "$kernel_deb" ]; then
    kernel_deb=$(ls "$cache/downloads/${kernel_pkg}_${kernel_ver//:/%3a}_amd64.deb" 2>/dev/null || true)
    if [ -z "$kernel_deb" ]; then
        log "downloading $kernel_pkg $kernel_ver"
        (cd "$cache/downloads" && apt-get download -q -o APT::Sandbox::User=root "$kernel_pkg=$kernel_ver" >&2)
        kernel_deb=$(ls "$cache/downloads/${kernel_pkg}_"*"_amd64.deb" | grep -F "_${kernel_ver//:/%3a}_" | head -n1)
    fi
fi
log "unpacking $kernel_deb"
dpkg-deb -x "$kernel_deb" "$work/kernel"
kver=$(ls "$work/kernel/lib/modules" | head -n1)
[ -n "$kver" ] && [ -f "$work/kernel/boot/vmlinuz-$kver" ] || die "no kernel in $kernel_deb"
# `vmlinuz` is the kernel ELF, uncompressed: QEMU boots it through its PVH
# entry, skipping the guest's xz decompression (~10 s under TCG).
python3 "$here/lib/extract-vmlinux.py" "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
depmod -b "$work/kernel" "$kver"

# Copies MODULES (and what they depend on, in load order) into ROOT/lib/modules
# and appends their paths (relative to /lib/modules) to ROOT/etc/modules.order.
add_modules() {
    local root=$1; shift
    local m line path rel
    mkdir -p "$root/etc" "$root/lib/modules"
    touch "$root/etc/modules.order"
    for m in "$@"; do
        modprobe -d "$work/kernel" -S "$kver" --show-depends "$m" > "$work/deps" \
            || die "module $m not found in $kver"
        while read -r line; do
            case $line in insmod\ *) ;; *) continue ;; esac
            path=$(echo "$line" | awk '{print $2}')
            rel=${path#"$work/kernel/lib/modules/"}
            grep -qxF "$rel" "$root/etc/modules.order" && continue
            mkdir -p "$root/lib/modules/$(dirname "$rel")"
            cp "$path" "$root/lib/modules/$rel"
            echo "$rel" >> "$root/etc/modules.order"
        done < "$work/deps"
    done
}

# Copies the busybox applets into ROOT (merged /bin; sbin and usr/* link to it).
add_busybox() {
    local root=$1 applet
    mkdir -p "$root/bin" "$root/usr" "$root/dev" "$root/proc" "$root/sys" "$root/run" \
        "$root/tmp" "$root/root" "$root/mnt" "$root/etc"
    ln -s bin "$root/sbin"
    ln -s ../bin "$root/usr/bin"
    ln -s ../bin "$root/usr/sbin"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
}

# Copies PROGRAM (a path inside the Debian root) and its libraries into ROOT/bin.
add_program() {
    local root=$1 prog=$2 lib
    cp "$work/root$prog" "$root/bin/$(basename "$prog")"
    for lib in $(chroot "$work/root" ldd "$prog" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        mkdir -p "$root$(dirname "$lib")"
        cp "$work/root$(chroot "$work/root" readlink -f "$lib")" "$root$lib"
    done
}

make_cpio() { # ROOT OUT (uncompressed: under TCG, unpacking gzip costs more than it saves)
    (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$2"
}

# --- Debian root (the systemd guest; tiny takes bash and pgrep from it) ----
# The bare debootstrap result is kept (as a tarball, by suite + packages) so
# that changing the rest of the recipe does not download Debian again.
base_tar=$cache/downloads/debootstrap-$suite-$(echo "$suite $packages $mirror" | sha256sum | cut -c1-16).tar
if [ -f "$base_tar" ]; then
    log "unpacking $base_tar"
    mkdir -p "$work/root"
    tar -C "$work/root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$base_tar"
else
    log "debootstrap $suite (minbase + $packages)"
    debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" > "$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$work/root"/var/cache/apt/archives/*.deb
    tar -C "$work/root" --numeric-owner --xattrs -cpf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
fi

# --- tiny -----------------------------------------------------------------
log "tiny initramfs"
t=$work/tiny
add_busybox "$t"
add_program "$t" /usr/bin/bash
add_program "$t" /usr/bin/pgrep
ln -s pgrep "$t/bin/pkill"
add_modules "$t" virtio_pci virtio_console virtio_net virtio_blk virtio-rng 9pnet_virtio 9p bochs
ln -s bin/busybox "$t/init"
install -m 644 "$here/tiny/inittab" "$t/etc/inittab"
install -m 755 "$here/tiny/rc" "$t/etc/rc"
install -m 755 "$here/tiny/rc.shutdown" "$t/etc/rc.shutdown"
install -m 755 "$here/tiny/backdoor" "$t/bin/backdoor"
install -m 755 "$here/common/vmtest-net" "$t/bin/vmtest-net"
printf 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$t/etc/passwd"
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' > "$t/etc/group"
echo tiny > "$t/etc/hostname"
make_cpio "$t" "$out/tiny/initrd"

# --- systemd: its initramfs ------------------------------------------------
log "systemd initramfs"
s=$work/sinit
add_busybox "$s"
add_modules "$s" virtio_pci virtio_blk ext4 crc32c_generic virtio_console 9pnet_virtio 9p
install -m 755 "$here/systemd/initrd-init" "$s/init"
make_cpio "$s" "$out/systemd/initrd"

# --- systemd: the root file system ----------------------------------------
log "systemd root: kernel modules, units, users"
r=$work/root
mkdir -p "$r/lib/modules"
cp -a "$work/kernel/lib/modules/$kver" "$r/lib/modules/"
(cd "$r/lib/modules/$kver/kernel" && rm -rf sound drivers/gpu drivers/media drivers/net/wireless \
    drivers/net/ethernet drivers/infiniband drivers/staging drivers/iio drivers/bluetooth \
    drivers/usb drivers/isdn drivers/mtd drivers/hwmon net/wireless net/mac80211 net/bluetooth)
depmod -b "$r" "$kver"
cp -a "$here/systemd/rootfs/." "$r/"
install -m 755 "$here/common/vmtest-net" "$r/usr/local/sbin/vmtest-net"
chroot "$r" /bin/sh -s < "$here/systemd/customize.sh" > "$work/customize.log" 2>&1 \
    || { cat "$work/customize.log" >&2; die "customize.sh failed"; }
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/var/log/*.log

log "systemd disk image"
truncate -s 4G "$work/root.img"
mkfs.ext4 -q -F -L root -E lazy_itable_init=0,lazy_journal_init=0 -d "$r" "$work/root.img"
qemu-img convert -O qcow2 "$work/root.img" "$out/systemd/base.qcow2"
rm -f "$work/root.img"

# --- start scripts, recipe -------------------------------------------------
NIX_VMTEST_GUESTS_DIR=$dir "$here/make-start-script" tiny tiny 1 "" "" "$out/run-tiny-vm"
NIX_VMTEST_GUESTS_DIR=$dir "$here/make-start-script" systemd systemd 1 "" "" "$out/run-systemd-vm"
{
    echo "key $key"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - start )) s"
    echo "kernel-release $kver"
    echo "mirror $mirror"
    recipe
} > "$out/recipe.txt"

rm -rf "$dir"
mv "$out" "$dir"
log "built in $(( $(date +%s) - start )) s"
echo "$dir"
