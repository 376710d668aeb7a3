# Image nodes under nixpkgs' test framework: a machine given as a kernel,
# an initrd and an optional disk, booted by a start script in the shape of
# NixOS' `run-<name>-vm`, so that the driver runs it like any NixOS node
# (driverConfiguration.vms). ./test-module.nix declares the `imageNodes`
# option with `submodule` below and uses the rest.
#
# The start script follows tests/guests/make-start-script (the same contract
# as NixOS' start scripts): it execs QEMU with the driver's arguments last,
# honours QEMU_OPTS, QEMU_KERNEL_PARAMS, TMPDIR/USE_TMPDIR, SHARED_DIR and
# NIX_DISK_IMAGE (a qcow2 overlay over the image's disk, made when missing),
# and puts one NIC per VLAN on the switch the driver names:
# QEMU_VLAN_SOCKET_<v> (nix-vmtest's switch, `-netdev stream`) or, where only
# that is set, QEMU_VDE_SOCKET_<v> (`-netdev vde`, nixpkgs' driver).
# The guest learns its network from kernel parameters (tests/guests/README.md):
# vmtest.hostname=, vmtest.net=<mac>=<ip>/24,..., vmtest.hosts=<name>=<ip>,...
{ lib }:

let
  h = import ./lib.nix;
  inherit (lib) mkOption types;
in
rec {
  # The options of one image node (imageNodes.<name>).
  submodule =
    {
      options = {
        kernel = mkOption {
          type = types.path;
          description = "The kernel (bzImage) to boot. A path is copied into the store.";
        };
        initrd = mkOption {
          type = types.path;
          description = "The initrd to boot; its init must start the backdoor shell on hvc0 (tests/guests).";
        };
        disk = mkOption {
          type = types.nullOr types.path;
          default = null;
          description = "A qcow2 root disk (/dev/vda). Never written: each run boots a qcow2 overlay over it.";
        };
        memory = mkOption {
          type = types.ints.positive;
          default = 256;
          description = "Memory in MiB.";
        };
        cpus = mkOption {
          type = types.ints.positive;
          default = 1;
          description = "Number of virtual CPUs.";
        };
        kernelParams = mkOption {
          type = types.either types.str (types.listOf types.str);
          default = "";
          apply = v: if builtins.isList v then lib.concatStringsSep " " v else v;
          description = "Extra kernel parameters.";
        };
        qemuFlags = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Extra QEMU arguments (before the driver's).";
        };
        vlans = mkOption {
          type = types.listOf (types.ints.between 1 255);
          default = [ 1 ];
          description = "The VLANs the node has a NIC on: node n gets 192.168.<v>.<n>/24 on each.";
        };
      };
    };

  # What a test script's `nodes` and the NixOS nodes' `nodes` argument see of
  # an image node: its options, and the attribute paths NixOS configurations
  # have for addressing.
  #   vm: the start script package (as NixOS nodes' system.build.vm)
  info =
    name: number: node: vm:
    let
      self = h.imageOf node // {
        inherit name;
        kind = "image";
        nodeNumber = number;
        ipAddresses = lib.listToAttrs (map (v: lib.nameValuePair (toString v) (h.ipAddress v number)) node.vlans);
        macAddresses = lib.listToAttrs (map (v: lib.nameValuePair (toString v) (h.macAddress v number)) node.vlans);
        networking = {
          hostName = name;
          domain = null;
          primaryIPAddress = if node.vlans == [ ] then "" else h.ipAddress (builtins.head node.vlans) number;
          primaryIPv6Address = "";
        };
        virtualisation = {
          inherit (node) vlans;
          # nixpkgs' testScript.nix looks at this for every node.
          useNixStoreImage = false;
        };
        system.build.vm = vm;
        config = self;
      };
    in
    self;

  # /etc/hosts lines for an image node, as nixpkgs' network.nix writes them
  # for NixOS nodes: its addresses on the VLANs the local node shares with
  # it, and its primary address.
  hostsLines =
    localVlans: img:
    let
      shared = map (v: h.ipAddress v img.nodeNumber) (lib.filter (v: lib.elem v localVlans) img.vlans);
      ips = lib.unique (shared ++ lib.optional (img.networking.primaryIPAddress != "") img.networking.primaryIPAddress);
    in
    lib.concatMapStrings (ip: "${ip} ${img.name}\n") ips;

  # The start script, run-<name>-vm.
  #   hosts: [ { name; ip; } ] for vmtest.hosts= (every node with an address)
  startScript =
    {
      hostPkgs,
      qemu,
      name,
      number,
      node,
      hosts,
    }:
    let
      qemuCommon = import (hostPkgs.path + "/nixos/lib/qemu-common.nix") {
        inherit (hostPkgs) lib stdenv;
      };
      inherit (hostPkgs.stdenv.hostPlatform) isx86;
      coreutils = "${hostPkgs.coreutils}/bin";
      params = lib.concatStringsSep " " (
        [
          "console=${qemuCommon.qemuSerialDevice}"
          "panic=-1"
          "quiet"
        ]
        ++ lib.optional (node.disk != null) "root=/dev/vda"
        ++ lib.optional (node.kernelParams != "") node.kernelParams
        ++ [ "vmtest.hostname=${name}" ]
        ++ lib.optional (hosts != [ ]) "vmtest.hosts=${lib.concatMapStringsSep "," (x: "${x.name}=${x.ip}") hosts}"
      );
      # One NIC per VLAN, on the socket the driver gives; none where it gives none.
      nic =
        v:
        let
          n = toString v;
          mac = h.macAddress v number;
          device = ''-device "virtio-net-pci,netdev=vlan${n},mac=${mac}"'';
        in
        ''
          if [ -n "''${QEMU_VLAN_SOCKET_${n}:-}" ]; then
            set -- "$@" -netdev "stream,id=vlan${n},server=off,addr.type=unix,addr.path=$QEMU_VLAN_SOCKET_${n}" ${device}
            net="$net''${net:+,}${mac}=${h.ipAddress v number}/24"
          elif [ -n "''${QEMU_VDE_SOCKET_${n}:-}" ]; then
            set -- "$@" -netdev "vde,id=vlan${n},sock=$QEMU_VDE_SOCKET_${n}" ${device}
            net="$net''${net:+,}${mac}=${h.ipAddress v number}/24"
          fi
      '';
    in
    hostPkgs.writeShellScriptBin "run-${name}-vm" ''
      # Image node ${name} (node ${toString number}) of a nix-vmtest test,
      # in the shape of NixOS' run-<name>-vm (nix-vmtest's nix/image-node.nix).
      set -e
      n_args=$#
      params=${lib.escapeShellArg params}

      ${lib.optionalString (node.disk != null) ''
        NIX_DISK_IMAGE=$(${coreutils}/readlink -f "''${NIX_DISK_IMAGE:-./${name}.qcow2}")
        if ! [ -e "$NIX_DISK_IMAGE" ]; then
          ${qemu}/bin/qemu-img create -q -f qcow2 -F qcow2 -b ${lib.escapeShellArg "${node.disk}"} "$NIX_DISK_IMAGE" >&2
        fi
        set -- "$@" -drive "cache=writeback,file=$NIX_DISK_IMAGE,id=drive1,if=none,index=1,werror=report,format=qcow2" \
          -device virtio-blk-pci,bootindex=1,drive=drive1,serial=root
      ''}
      net=
      ${lib.concatMapStrings nic node.vlans}
      if [ -z "''${TMPDIR:-}" ] || [ -z "''${USE_TMPDIR:-}" ]; then
        TMPDIR=$(${coreutils}/mktemp -d nix-vm.XXXXXXXXXX --tmpdir)
      fi
      ${coreutils}/mkdir -p "$TMPDIR/xchg"
      set -- "$@" -virtfs "local,path=''${SHARED_DIR:-$TMPDIR/xchg},security_model=none,mount_tag=shared"
      set -- "$@" ${lib.escapeShellArgs node.qemuFlags} ''${QEMU_OPTS:-}

      # The script's own arguments (the driver's) go last.
      while [ "$n_args" -gt 0 ]; do
        arg=$1; shift; set -- "$@" "$arg"; n_args=$((n_args - 1))
      done

      cd "$TMPDIR"
      exec ${qemuCommon.qemuBinary qemu} -name ${lib.escapeShellArg name} -m ${toString node.memory} -smp ${toString node.cpus} \
        -nodefaults -display none ${lib.optionalString isx86 "-vga std"} \
        -kernel ${lib.escapeShellArg "${node.kernel}"} -initrd ${lib.escapeShellArg "${node.initrd}"} \
        -append "$params''${net:+ vmtest.net=$net} ''${QEMU_KERNEL_PARAMS:-}" \
        "$@"
    '';
}
