# Runs as /bin/sh inside the debootstrapped root (chroot) after the files of
# systemd/rootfs/ are copied in.
set -eux

echo systemd > /etc/hostname
: > /etc/resolv.conf          # no DNS in tests: names come from /etc/hosts
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > /etc/hosts

# Root logs in without a password (the backdoor needs none; this is for
# consoles and `su`).
passwd -d root

# alice, and a program only she can run and only her PATH has (the NixOS
# tutorial's `su -- alice -c 'which firefox'` test, Debian style).
useradd --create-home --shell /bin/bash --user-group alice
mkdir -p /usr/local/alice-bin
cat > /usr/local/alice-bin/cowsay-alice <<'SCRIPT'
#!/bin/sh
echo " ______"
echo "< ${*:-moo} >"
echo " ------"
echo "        \\   ^__^"
echo "         \\  (oo)\\_______"
echo "            (__)\\       )\\/\\"
echo "                ||----w |"
echo "                ||     ||"
SCRIPT
chown alice:alice /usr/local/alice-bin/cowsay-alice
chmod 0700 /usr/local/alice-bin/cowsay-alice
line='case ":$PATH:" in *:/usr/local/alice-bin:*) ;; *) PATH="$PATH:/usr/local/alice-bin" ;; esac'
echo "$line" > /home/alice/.bash_env
printf '\n# programs only alice has\n%s\n' "$line" >> /home/alice/.profile
chown alice:alice /home/alice/.bash_env /home/alice/.profile

# Keep interface names eth0, eth1, ... (no predictable renaming).
mkdir -p /etc/systemd/network
ln -sf /dev/null /etc/systemd/network/99-default.link

systemctl enable backdoor.service vmtest-net.service nginx.service

# Nothing may print on the backdoor's console, and boot should be quick.
systemctl mask serial-getty@hvc0.service serial-getty@ttyS0.service getty@tty1.service \
    console-getty.service e2scrub_reap.service e2scrub_all.timer fstrim.timer \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer man-db.timer \
    systemd-timesyncd.service \
    modprobe@drm.service modprobe@efi_pstore.service modprobe@dm_mod.service modprobe@loop.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount systemd-journal-flush.service
systemctl mask systemd-random-seed.service systemd-sysusers.service

# Generators that only cost time here (each is a process under TCG). Kept:
# fstab, debug (systemd.mask=/systemd.wants= on the kernel command line).
mkdir -p /etc/systemd/system-generators
for g in cryptsetup gpt-auto hibernate-resume integritysetup veritysetup system-update sysv rc-local run getty; do
    ln -sf /dev/null "/etc/systemd/system-generators/systemd-$g-generator"
done
