{
  description = "nix-vmtest: NixOS-style VM integration tests with a Rust test driver and a Nix plugin (builtins.vmTest)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f (pkgsFor system));
      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ self.overlays.default ];
        };
    in
    {
      # Driver (bin/nixos-test-driver), plugin (lib/libnix_vmtest.so)
      # and Python client (share/nix-vmtest/python), built from Cargo.lock.
      # The plugin loads only into the Nix it was built against: `default`
      # is built against pkgs.nix; `nix-vmtest-nix_2_31` etc. against
      # nixpkgs' other Nix versions; `lib.forNix pkgs yourNix` against any.
      packages = forAllSystems (
        pkgs:
        {
          default = pkgs.nix-vmtest;
          nix-vmtest = pkgs.nix-vmtest;
          # The driver alone (no Nix headers needed).
          driver = pkgs.nix-vmtest.override { withPlugin = false; };
        }
        // nixpkgs.lib.mapAttrs' (name: nix: {
          name = "nix-vmtest-${name}";
          value = self.lib.forNix pkgs nix;
        }) (
          # The versions this nixpkgs still has (removed ones throw).
          nixpkgs.lib.filterAttrs (
            name: nix:
            builtins.elem name [
              "nix_2_28"
              "nix_2_31"
              "nix_2_34"
              "nix_2_35"
              "latest"
            ]
            && (builtins.tryEval nix).success
          ) (pkgs.nixVersions or { })
        )
      );

      # runTest / evalTest: nixpkgs' own (this input's nixos/lib/testing)
      # with nix-vmtest's test module (lib.testModule), which swaps the
      # driver and adds imageNodes; the test gives hostPkgs, as with
      # nixpkgs' nixos.lib.runTest:
      #   self.lib.runTest { hostPkgs = pkgs; name = "x"; nodes = ...; testScript = "..."; }
      # lib.forPkgs pkgs: the same with pkgs preset (runNixOSTest, nixosTest too).
      # lib.forNix pkgs nix: the package with the plugin built against `nix`
      # (e.g. pkgs.nixVersions.nix_2_31, or the Nix your daemon runs).
      lib = import ./nix { inherit nixpkgs; } // {
        forPkgs = pkgs: import ./nix { inherit pkgs; };
        forNix = pkgs: nix: pkgs.nix-vmtest.override { inherit nix; };
      };

      # pkgs.nixosTest, pkgs.testers.nixosTest and pkgs.testers.runNixOSTest on
      # nix-vmtest's driver; pkgs.nix-vmtest.
      overlays.default = import ./nix/overlay.nix;

      # Loads the plugin into Nix (nix.settings.plugin-files).
      nixosModules.default = ./nix/module.nix;

      # The tutorial's tests in their NixOS form, through the overlay.
      checks = forAllSystems (
        pkgs:
        import ./examples { inherit pkgs; }
        // {
          package = pkgs.nix-vmtest;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.nix-vmtest ];
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            rust-analyzer
            qemu_test
            python3
            nix
          ];
        };
      });
    };
}
