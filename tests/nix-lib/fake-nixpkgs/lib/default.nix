# A stand-in for nixpkgs' lib, for tests/nix-lib/run.sh only: what
# evaluating flake.nix's output names reaches for. Everything that needs
# nixpkgs itself is checked against a real tree (tests/nixpkgs-eval).
{
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
}
