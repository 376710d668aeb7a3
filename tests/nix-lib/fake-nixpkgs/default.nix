# Stand-in for a nixpkgs package set (tests/nix-lib only): what the evaluator
# without nixpkgs reaches for when a test gives hostPkgs (QEMU and python3
# for the plugin's run), with fake derivations.
{ ... }:
let
  fake =
    name:
    derivation {
      inherit name;
      system = "x86_64-linux";
      builder = "/bin/sh";
    };
  self = {
    lib = import ./lib;
    path = ./.;
    stdenv.hostPlatform.system = "x86_64-linux";
    runtimeShell = "/bin/sh";
    writeText = name: text: builtins.toFile name text;
    writeTextFile = { name, text, ... }: (fake name) // { inherit text; };
    callPackage = f: args: fake "fake-package";
    python3Packages = { };
    qemu_test = fake "fake-qemu_test";
    python3 = fake "fake-python3";
    pkgs = self;
  };
in
self
