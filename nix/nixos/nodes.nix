# Evaluates the NixOS nodes of a test with nixpkgs' own module system
# (nixos/lib/eval-config.nix), QEMU VM support (virtualisation/qemu-vm.nix)
# and nix-vmtest's test instrumentation (./test-instrumentation.nix).
# Returns { <name> = <the node's NixOS config>; }.
{
  lib,
  nixpkgsPath,
  hostPkgs,
  # name -> node number (1..N in name order, over every node of the test)
  numbers,
  # what the `nodes` module argument holds (every node, NixOS or not)
  nodesCompat,
  # the test's option values (eval-test.nix)
  testConfig,
  # name -> list of NixOS modules
  nodeModules,
}:

let
  nodePkgs = if testConfig.node.pkgs != null then testConfig.node.pkgs else hostPkgs;
  readOnly = testConfig.node.pkgsReadOnly && testConfig.node.pkgs != null;
  readOnlyModule = nixpkgsPath + "/nixos/modules/misc/nixpkgs/read-only.nix";

  pkgsModule =
    if readOnly then
      {
        key = "nix-vmtest-pkgs";
        imports = lib.optional (builtins.pathExists readOnlyModule) readOnlyModule;
        nixpkgs.pkgs = testConfig.node.pkgs;
      }
    else
      {
        key = "nix-vmtest-pkgs";
        # As nixpkgs' nixosTest does: the test's pkgs unless the node says otherwise.
        nixpkgs.pkgs = lib.mkDefault nodePkgs;
      };

  hostModule =
    { options, ... }:
    {
      key = "nix-vmtest-host";
      config = lib.mkMerge [
        (lib.mkIf (testConfig.qemu.package != null) {
          virtualisation.qemu.package = testConfig.qemu.package;
        })
        (lib.optionalAttrs (options ? virtualisation.host.pkgs) {
          virtualisation.host.pkgs = hostPkgs;
        })
      ];
    };

  evalNode =
    name: modules:
    import (nixpkgsPath + "/nixos/lib/eval-config.nix") {
      inherit lib;
      system = nodePkgs.stdenv.hostPlatform.system;
      specialArgs = testConfig.node.specialArgs;
      modules =
        [
          ./test-instrumentation.nix
          {
            key = "nix-vmtest-node";
            _module.args.nodes = nodesCompat;
            virtualisation.test.nodeName = name;
            virtualisation.test.nodeNumber = numbers.${name};
          }
          pkgsModule
          hostModule
        ]
        ++ testConfig.extraBaseModules
        ++ testConfig.defaults
        ++ modules;
    };
in
builtins.mapAttrs (name: modules: (evalNode name modules).config) nodeModules
