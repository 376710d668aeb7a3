# nix-vmtest: the driver (bin/nixos-test-driver), the Nix plugin that adds
# builtins.vmTest (lib/libnix_vmtest.so) and the Python client
# the test script imports (share/nix-vmtest/python), built from Cargo.lock.
#
# The plugin must be built against the Nix that loads it (it refuses any
# other version when loaded, naming both): `nix` is pkgs.nix by default;
# override it with the Nix your daemon and CLI run (the NixOS module does),
# e.g. `nix-vmtest.override { nix = pkgs.nixVersions.nix_2_31; }`.
# build.rs finds that Nix through pkg-config (its .pc files, from `nix` in
# buildInputs): version, headers, and -std=c++23 from 2.31 on. Supported:
# Nix 2.8 and 2.28 and later (see the README's support table).
{
  lib,
  rustPlatform,
  pkg-config,
  makeWrapper,
  nix,
  boost,
  nlohmann_json,
  boehmgc,
  python3,
  qemu_test,
  # Build the plugin (needs nix's headers); the driver alone does not.
  withPlugin ? true,
}:

let
  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
  root = toString ../.;
  src = lib.cleanSourceWith {
    name = "nix-vmtest-source";
    src = ../.;
    filter =
      path: type:
      let
        rel = lib.removePrefix (root + "/") (toString path);
        top = builtins.head (lib.splitString "/" rel);
      in
      builtins.elem top [
        "Cargo.toml"
        "Cargo.lock"
        "build.rs"
        "src"
        "cpp"
        "python"
        "benches"
      ]
      && !(lib.hasSuffix ".pyc" rel)
      && baseNameOf rel != "__pycache__";
  };
in
rustPlatform.buildRustPackage {
  pname = "nix-vmtest";
  inherit (cargoToml.package) version;
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  buildFeatures = lib.optional withPlugin "nix-plugin";

  nativeBuildInputs = [
    pkg-config
    makeWrapper
  ];
  buildInputs = lib.optionals withPlugin [
    nix
    boost
    nlohmann_json
    boehmgc
  ];

  # build.rs takes Nix's headers from the .pc files' include dirs
  # (nix/expr/eval.hh from 2.28 on); say where they are for a Nix whose
  # .pc files do not.
  NIX_INCLUDE_DIR = lib.optionalString (
    withPlugin && lib.versionOlder (nix.version or "2.28") "2.28"
  ) "${lib.getDev nix}/include";

  # The integration tests boot VMs and run nix-build; only unit tests run here.
  cargoTestFlags = [ "--lib" ];
  nativeCheckInputs = [ python3 ];

  postInstall =
    ''
      mkdir -p $out/share/nix-vmtest
      cp -r python $out/share/nix-vmtest/python
      find $out/share/nix-vmtest/python -name __pycache__ -prune -exec rm -rf {} +
    ''
    + lib.optionalString withPlugin ''
      # The plugin finds the driver and the Python client from its own place:
      # <prefix>/lib/libnix_vmtest.so -> <prefix>/bin, <prefix>/share.
      if ! [ -e $out/lib/libnix_vmtest.so ]; then
        mkdir -p $out/lib
        cp target/*/release/libnix_vmtest.so $out/lib/ 2>/dev/null \
          || cp target/release/libnix_vmtest.so $out/lib/
      fi
    ''
    + ''
      # QEMU and Python for image nodes and the test script, after whatever
      # PATH the test's derivation sets (extraPythonPackages, OCR). A
      # NIX_VMTEST_PYTHON that does not exist here (the plugin's Debian
      # default) is dropped.
      wrapProgram $out/bin/nixos-test-driver \
        --run 'if [ -n "''${NIX_VMTEST_PYTHON:-}" ] && [ ! -x "$NIX_VMTEST_PYTHON" ]; then unset NIX_VMTEST_PYTHON; fi' \
        --suffix PATH : ${
          lib.makeBinPath [
            qemu_test
            python3
          ]
        }
    '';

  meta = {
    description = "NixOS-style VM integration tests: Rust test driver and a Nix plugin adding builtins.vmTest";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
    mainProgram = "nixos-test-driver";
  };
}
