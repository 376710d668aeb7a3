# What makes a NixOS configuration a node of a nix-vmtest test:
# - QEMU VM support (nixpkgs' virtualisation/qemu-vm.nix);
# - nixpkgs' own test instrumentation (root shell on hvc0, serial console,
#   journald to the console, no getty on hvc0/ttyS0): the backdoor protocol
#   the driver speaks, taken from the nixpkgs the node is built from, so it
#   always matches that nixpkgs;
# - the test network, as nixpkgs' nixos/lib/testing/network.nix lays it out
#   (node n on VLAN v: 192.168.v.n/24, MAC 52:54:00:12:v:n in hex, every
#   node in /etc/hosts), but with each VLAN's NIC on nix-vmtest's switch
#   (`-netdev stream` on the unix socket $QEMU_VLAN_SOCKET_<v> the driver
#   sets) instead of vde.
{
  config,
  lib,
  options,
  modulesPath,
  nodes,
  ...
}:

let
  h = import ../lib.nix;
  inherit (lib)
    mkDefault
    mkForce
    mkOption
    types
    ;

  cfg = config.virtualisation.test;
  n = cfg.nodeNumber;

  # Where virtualisation.allInterfaces exists it is the list (vlans and
  # interfaces); otherwise each of virtualisation.vlans becomes eth1, eth2,
  # ... (with an address), plus the named virtualisation.interfaces.
  interfaces =
    if options ? virtualisation.allInterfaces then
      lib.attrValues config.virtualisation.allInterfaces
    else
      h.imap1 (i: vlan: {
        name = "eth${toString i}";
        inherit vlan;
        assignIP = true;
      }) config.virtualisation.vlans
      ++ lib.mapAttrsToList (name: itf: {
        inherit name;
        inherit (itf) vlan;
        assignIP = itf.assignIP or false;
      }) (config.virtualisation.interfaces or { });

  assigned = builtins.filter (i: i.assignIP or true) interfaces;

  nicFlags = lib.concatLists (
    h.imap1 (i: itf: [
      ''-netdev stream,id=vlan${toString i},server=off,addr.type=unix,addr.path="$QEMU_VLAN_SOCKET_${toString itf.vlan}"''
      "-device virtio-net-pci,netdev=vlan${toString i},mac=${h.macAddress itf.vlan n}"
    ]) interfaces
  );

  udevRules = map (
    itf: ''SUBSYSTEM=="net",ACTION=="add",ATTR{address}=="${h.macAddress itf.vlan n}",NAME="${itf.name}"''
  ) interfaces;

  withV6 = options ? networking.primaryIPv6Address;

  hostLine =
    node:
    let
      net = node.networking;
      hostNames = (if (net.domain or null) != null then "${net.hostName}.${net.domain} " else "") + net.hostName;
      v4 = net.primaryIPAddress or "";
      v6 = net.primaryIPv6Address or "";
    in
    lib.optionalString (v4 != "") "${v4} ${hostNames}\n" + lib.optionalString (v6 != "") "${v6} ${hostNames}\n";
in
{
  imports = [
    (modulesPath + "/virtualisation/qemu-vm.nix")
    (modulesPath + "/testing/test-instrumentation.nix")
  ];

  options.virtualisation.test = {
    nodeName = mkOption {
      type = types.str;
      internal = true;
      description = "The node's name in the test's `nodes`.";
    };
    nodeNumber = mkOption {
      type = types.int;
      internal = true;
      description = "The node's number: 1..N in name order over all nodes of the test.";
    };
  };

  config = lib.mkMerge [
    {
      networking.hostName = mkDefault cfg.nodeName;

      networking.interfaces = builtins.listToAttrs (
        map (itf: {
          inherit (itf) name;
          value =
            {
              ipv4.addresses = [
                {
                  address = h.ipAddress itf.vlan n;
                  prefixLength = 24;
                }
              ];
            }
            // lib.optionalAttrs withV6 {
              ipv6.addresses = [
                {
                  address = h.ipv6Address itf.vlan n;
                  prefixLength = 64;
                }
              ];
            };
        }) assigned
      );

      networking.primaryIPAddress = lib.optionalString (assigned != [ ]) (h.ipAddress (builtins.head assigned).vlan n);

      # Every node of the test (NixOS or image) by its address on its first VLAN.
      networking.extraHosts = lib.concatMapStrings hostLine (lib.attrValues nodes);

      virtualisation.qemu.options = nicFlags;

      # The VLANs this node's start script connects to (the driver makes a
      # switch for each).
      system.build.vmtestVlans = h.unique (map (itf: itf.vlan) interfaces);

      documentation.nixos.enable = mkDefault false;
    }
    (lib.optionalAttrs withV6 {
      networking.primaryIPv6Address = lib.optionalString (assigned != [ ]) (h.ipv6Address (builtins.head assigned).vlan n);
    })
    (lib.optionalAttrs (options ? boot.initrd.services.udev.rules) {
      boot.initrd.services.udev.rules = lib.concatMapStrings (r: r + "\n") udevRules;
    })
    (lib.optionalAttrs (options ? system.nixos.revision) {
      # Constant metadata, so that a new nixpkgs revision alone does not rerun tests.
      system.nixos.revision = mkForce "constant-nixos-revision";
      system.nixos.versionSuffix = mkForce "test";
      system.nixos.label = mkForce "test";
    })
    (lib.optionalAttrs (options ? system.switch.enable) {
      system.switch.enable = mkDefault (config.specialisation != { } || config.virtualisation.installBootLoader);
    })
  ];
}
