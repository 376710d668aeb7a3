# nix-vmtest's Nix library: NixOS-style VM tests on nix-vmtest's driver.
#
#   let vmtest = import ./nix { pkgs = import <nixpkgs> { }; };   # with nixpkgs
#   let vmtest = import ./nix { };                                # without: image nodes only
#   vmtest.runTest { name = "x"; nodes.m = { ... }; testScript = "..."; }
#   vmtest.nixosTest { ... }          # makeTest's form: also `machine = ...;`
#
# With nixpkgs (`pkgs` or `nixpkgs`), a test is nixpkgs' own: its test
# framework (nixos/lib/testing) evaluates it, with ./test-module.nix swapping
# the driver for nix-vmtest's and adding `imageNodes` (./nixpkgs.nix).
# Without nixpkgs, nix-vmtest's own evaluator (./eval-test.nix) takes tests
# whose nodes are images or start scripts; with the plugin loaded
# (builtins.vmTest) it builds them through the plugin, else through a
# derivation whose builder is the driver (the `driver` given here).
{
  # A nixpkgs package set: tests go through nixpkgs' test framework, with
  # hostPkgs defaulting to it.
  pkgs ? null,
  # A nixpkgs source tree, when pkgs is not given: tests go through its test
  # framework and give hostPkgs themselves (as with nixpkgs' runTest).
  nixpkgs ? null,
  # The driver. With nixpkgs: a package with bin/nixos-test-driver (default:
  # built from this repository, nix/package.nix). Without: the binary, or a
  # directory with bin/nixos-test-driver, for builds without the plugin.
  driver ? null,
  # Without nixpkgs: build through builtins.vmTest when the plugin is loaded.
  useBuiltin ? true,
  # Without nixpkgs: PATH inside the build (QEMU and python3 of the host;
  # then the sandbox must be off, or these directories listed in
  # extra-sandbox-paths).
  hostPath ? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  system ? builtins.currentSystem or "x86_64-linux",
}:

let
  h = import ./lib.nix;

  withNixpkgs = pkgs != null || nixpkgs != null;

  # With nixpkgs: nixpkgs' framework plus the test module.
  viaNixpkgs = import ./nixpkgs.nix { inherit pkgs nixpkgs driver; };
  # A test that names its nixpkgs (hostPkgs) while the library has none.
  viaHostPkgs = hostPkgs: import ./nixpkgs.nix {
    pkgs = hostPkgs;
    driver = if h.isDerivation driver then driver else null;
  };

  # Without nixpkgs: the own evaluator.
  core = import ./eval-test.nix {
    pkgs = null;
    inherit
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

  own = rec {
    evalTest =
      module:
      core.evalTest {
        modules = [ module ];
        entry = "runTest";
      };

    runTest =
      module:
      let
        e = evalTest module;
      in
      if e.delegateTo != null then (viaHostPkgs e.delegateTo).runTest module else e.result;

    nixosTest =
      test:
      let
        t = loadTest test;
        called =
          if builtins.isFunction t then
            h.callWith t {
              pkgs = null;
              lib = null;
            }
          else
            t;
        e = core.evalTest {
          modules = [ called ];
          entry = "nixosTest";
        };
      in
      if e.delegateTo != null then (viaHostPkgs e.delegateTo).nixosTest test else e.result;

    runNixOSTest = _: throw "nix-vmtest: runNixOSTest is nixpkgs' testers.runNixOSTest: it needs nixpkgs (import nix-vmtest's nix/ with { pkgs = ...; }, or use the overlay). Without nixpkgs, use runTest.";
  };

  entry = if withNixpkgs then viaNixpkgs else own;
in
{
  # runTest module: nixpkgs' runTest (a test module: attribute set, function
  # of { config, lib, hostPkgs, nodes, ... }, or path).
  # nixosTest test: nixpkgs' testers.nixosTest / makeTest (an attribute set,
  # or a function called with pkgs, or a path to either).
  # runNixOSTest module: nixpkgs' testers.runNixOSTest (needs pkgs).
  # evalTest module: the whole evaluation (with nixpkgs: nixpkgs' evalTest,
  # with `config`, `options`, ...; without: config, spec, result, ...).
  inherit (entry)
    runTest
    nixosTest
    runNixOSTest
    evalTest
    ;
  makeTest = entry.nixosTest;

  # The module that makes nixpkgs' test framework run a test on nix-vmtest's
  # driver (and adds imageNodes):
  #   pkgs.testers.runNixOSTest { imports = [ vmtest.testModule ]; ... }
  testModule = ./test-module.nix;

  # Option names, defaults and descriptions of the evaluator without
  # nixpkgs (see options.nix). With nixpkgs the options are nixpkgs'.
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
