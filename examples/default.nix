# Every example, for the flake's checks and for nix-build.
#   pkgs:   nixpkgs with nix-vmtest's overlay (NixOS examples); null to skip them
#   guests: the Debian guests' directory (tests/guests/build.sh --print-dir);
#           null to skip the Debian examples
{
  pkgs ? null,
  guests ? null,
  driver ? null,
}:

let
  nixosExamples =
    if pkgs == null then
      { }
    else
      {
        nixos-minimal = import ./nixos/minimal.nix { inherit pkgs; };
        nixos-client-server = import ./nixos/client-server.nix { inherit pkgs; };
      };
  debianArgs = {
    inherit guests;
    vmtest = import ../nix { inherit pkgs driver; };
  };
  debianExamples =
    if guests == null then
      { }
    else
      {
        debian-minimal = import ./debian/minimal.nix debianArgs;
        debian-client-server = import ./debian/client-server.nix debianArgs;
        debian-tiny = import ./debian/tiny.nix debianArgs;
      };
in
nixosExamples // debianExamples
