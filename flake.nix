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
      packages = forAllSystems (pkgs: {
        default = pkgs.nix-vmtest;
        nix-vmtest = pkgs.nix-vmtest;
        # The driver alone (no Nix headers needed).
        driver = pkgs.nix-vmtest.override { withPlugin = false; };
      });

      # runTest / nixosTest / runNixOSTest. NixOS nodes need hostPkgs in the
      # test (as nixpkgs' nixos.lib.runTest does); image nodes need nothing.
      #   self.lib.runTest { hostPkgs = pkgs; name = "x"; nodes = ...; testScript = "..."; }
      # lib.forPkgs pkgs: the same functions with pkgs preset.
      lib = import ./nix { } // {
        forPkgs = pkgs: import ./nix { inherit pkgs; };
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
