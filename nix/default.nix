# nix-vmtest's Nix library: NixOS-style VM tests on nix-vmtest's driver.
#
#   let vmtest = import ./nix { };               # no nixpkgs: image nodes only
#   let vmtest = import ./nix { pkgs = import <nixpkgs> { }; };   # NixOS nodes too
#   vmtest.runTest { name = "x"; nodes.m = { kernel = ...; initrd = ...; }; testScript = "..."; }
#   vmtest.nixosTest { ... }          # makeTest's form: also `machine = ...;`
#
# With the plugin loaded (builtins.vmTest), tests are built by it; without it,
# by a derivation whose builder is the driver (from the flake's package, or
# the `driver` given here).
{
  # A nixpkgs package set; NixOS nodes need it (or hostPkgs in the test).
  pkgs ? null,
  # A nixpkgs source tree, when pkgs is not given (only its lib and NixOS
  # modules are used; hostPkgs in the test still provides the packages).
  nixpkgs ? null,
  # The driver for builds without the plugin: a package with
  # bin/nixos-test-driver, or the binary itself (a path). Default: built from
  # this repository with pkgs (nix/package.nix).
  driver ? null,
  # Build through builtins.vmTest when the plugin is loaded.
  useBuiltin ? true,
  # PATH inside the build when there is no nixpkgs: QEMU and python3 come
  # from the host (then the sandbox must be off, or these directories listed
  # in extra-sandbox-paths).
  hostPath ? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  system ? builtins.currentSystem or "x86_64-linux",
}:

let
  h = import ./lib.nix;
  core = import ./eval-test.nix {
    inherit
      pkgs
      nixpkgs
      driver
      useBuiltin
      hostPath
      system
      ;
  };

  loadTest = t: if builtins.isPath t then import t else t;

  # nixpkgs' mkDefault, without nixpkgs' lib.
  mkDefault = content: {
    _type = "override";
    priority = 1000;
    inherit content;
  };

  # The whole evaluation: config (option values), nodes, spec, result.
  evalTest =
    module:
    core.evalTest {
      modules = [ module ];
      entry = "runTest";
    };

  # nixpkgs' runTest / testers.runNixOSTest: takes a test module (attribute
  # set, function of { config, lib, pkgs, hostPkgs, nodes, ... }, or path).
  runTest = module: (evalTest module).result;

  # nixpkgs' nixosTest / makeTest: an attribute set, or a function called
  # with pkgs (as nixpkgs' nixosTest calls it), or a path to either.
  nixosTest =
    test:
    let
      t = loadTest test;
      called =
        if builtins.isFunction t then
          h.callWith t (
            if pkgs != null then
              pkgs
            else
              {
                pkgs = null;
                lib = null;
              }
          )
        else
          t;
    in
    (core.evalTest {
      modules = [ called ];
      entry = "nixosTest";
    }).result;

  # What the overlay installs as pkgs.testers.runNixOSTest: like nixpkgs',
  # host and node packages default to pkgs.
  runNixOSTest =
    module:
    runTest {
      _file = "nix-vmtest's runNixOSTest";
      imports = [ module ];
      hostPkgs = mkDefault pkgs;
      node.pkgs = mkDefault pkgs;
    };
in
{
  inherit
    runTest
    nixosTest
    evalTest
    runNixOSTest
    ;
  makeTest = nixosTest;

  # Option names, defaults and descriptions (see options.nix).
  options = import ./options.nix;

  # The addressing every node gets (nixpkgs' network.nix): node n on VLAN v.
  addressing = {
    inherit (h) macAddress ipAddress ipv6Address;
  };

  # True when this Nix has builtins.vmTest (the plugin is loaded).
  haveBuiltin = builtins ? vmTest;

  overlay = import ./overlay.nix;
  nixosModule = ./module.nix;
}
