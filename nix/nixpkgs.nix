# The entry points with nixpkgs: nixpkgs' own test framework
# (nixos/lib/testing, its evalTest/runTest; testers.runNixOSTest;
# testers.nixosTest/makeTest) with ./test-module.nix added, which swaps the
# driver for nix-vmtest's and adds `imageNodes`. A test means what it means
# under nixpkgs; the result is nixpkgs' (vm-test-run-<name>, .driver,
# .driverInteractive, .nodes, .config, .extend, ...).
{
  # A nixpkgs package set (its `path` is the source tree), or null.
  pkgs ? null,
  # A nixpkgs source tree, when there is no `pkgs`; tests then give
  # hostPkgs themselves, as with nixpkgs' nixos/lib runTest.
  nixpkgs ? null,
  # The testers whose runNixOSTest / nixosTest get the module (the overlay
  # passes prev.testers); default pkgs.testers.
  testers ? if pkgs != null then pkgs.testers else null,
  # nix-vmtest's driver package (bin/nixos-test-driver) instead of the one
  # built from this repository, or null.
  driver ? null,
}:

let
  # A path, or a flake input (an attribute set with outPath and lib); as a
  # string, so that a path is not copied into the store.
  src = toString (if nixpkgs != null then nixpkgs else pkgs.path);
  lib =
    if pkgs != null then
      pkgs.lib
    else if nixpkgs ? lib then
      nixpkgs.lib
    else
      import (src + "/lib");
  nixosLib = import (src + "/nixos/lib") { inherit lib; };

  # The test module, and the driver package when one was given. A module
  # imported by its path is imported once, however often it is added.
  modules = [
    ./test-module.nix
  ]
  ++ lib.optional (driver != null) {
    _file = "nix-vmtest's nix/ (the driver given to it)";
    vmtestDriverPackage =
      if lib.isDerivation driver then
        driver
      else
        throw "nix-vmtest: with nixpkgs, `driver` must be a package with bin/nixos-test-driver (e.g. nix-vmtest's, built with that nixpkgs), not ${builtins.typeOf driver} ${toString driver}.";
  };

  needPkgs = what: throw "nix-vmtest: ${what} needs a nixpkgs package set: import nix-vmtest's nix/ with { pkgs = import <nixpkgs> { }; } (or use the overlay).";

  # With a package set, the host side defaults to it (as testing-python.nix's
  # runTest does); a test's own hostPkgs wins.
  hostDefault = lib.optional (pkgs != null) {
    _file = "nix-vmtest's runTest (hostPkgs defaults to the pkgs given to nix/)";
    hostPkgs = lib.mkDefault pkgs;
  };

  # nixpkgs' evalTest / runTest, with the module.
  evalTest = module: nixosLib.evalTest { imports = modules ++ hostDefault ++ [ module ]; };
  runTest = module: nixosLib.runTest { imports = modules ++ hostDefault ++ [ module ]; };

  # nixpkgs' testers.runNixOSTest (hostPkgs = pkgs, node.pkgs = pkgs), with
  # the module.
  runNixOSTest =
    if testers == null then
      needPkgs "runNixOSTest"
    else
      module: testers.runNixOSTest { imports = modules ++ [ module ]; };

  # nixpkgs' testers.nixosTest (makeTest's argument list), through nixpkgs'
  # own makeTest; the module comes in through the result's `extend`. makeTest
  # takes a fixed set of attributes, so `imageNodes` is taken out and given
  # to the extension.
  nixosTest =
    if testers == null then
      needPkgs "nixosTest"
    else
      test:
      let
        loaded = if builtins.isPath test then import test else test;
        called = lib.toFunction loaded pkgs;
        images = lib.optional (called ? imageNodes) {
          _file = "nix-vmtest's nixosTest (imageNodes)";
          inherit (called) imageNodes;
        };
      in
      (testers.nixosTest (removeAttrs called [ "imageNodes" ])).extend {
        modules = modules ++ images;
      };
in
{
  inherit
    evalTest
    runTest
    runNixOSTest
    nixosTest
    ;
  makeTest = nixosTest;
  testModule = ./test-module.nix;
}
