# Stand-in for a nixpkgs package set (tests/nix-lib only): what the library
# and the overlay reach for, with fake derivations.
{ ... }:
let
  self = {
    lib = import ./lib;
    path = ./.;
    stdenv.hostPlatform.system = "x86_64-linux";
    runtimeShell = "/bin/sh";
    writeText = name: text: builtins.toFile name text;
    writeTextFile =
      { name, text, ... }:
      derivation {
        inherit name text;
        system = "x86_64-linux";
        builder = "/bin/sh";
      };
    callPackage =
      f: args:
      derivation {
        name = "fake-package";
        system = "x86_64-linux";
        builder = "/bin/sh";
      };
    python3Packages = { };
    qemu_test = derivation {
      name = "fake-qemu_test";
      system = "x86_64-linux";
      builder = "/bin/sh";
    };
    python3 = derivation {
      name = "fake-python3";
      system = "x86_64-linux";
      builder = "/bin/sh";
    };
    testers = {
      existing = true;
    };
    pkgs = self;
  };
in
self
