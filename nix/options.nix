# The options a test takes: the names and defaults of nixpkgs' runTest /
# nixosTest, plus the few that only nix-vmtest has. `merge` says how several
# definitions of one option (from `imports`) combine:
#   unique   one value (several equal scalars are fine)
#   attrs    attribute sets merged, later definitions win
#   list     lists concatenated
#   modules  NixOS (or test) modules collected into a list
#   nodes    per node name, definitions collected (see eval-test.nix)
#   pyPkgs   functions `p: [ ... ]` whose results are concatenated
# `required = true` options have no default.
{
  name = {
    merge = "unique";
    type = "string";
    # runTest needs a name; nixosTest falls back to "unnamed" as makeTest does.
    required = true;
    description = "Name of the test; the result is vm-test-run-<name>.";
  };
  nodes = {
    merge = "nodes";
    default = { };
    description = ''
      The machines: a NixOS configuration (module), an image
      { kernel; initrd; disk ? null; memory ? 256; cpus ? 1; kernelParams ? "";
      qemuFlags ? [ ]; vlans ? [ 1 ]; }, or a start script
      (a string or derivation, or { startScript; vlans ? [ 1 ]; }).
    '';
  };
  imageNodes = {
    merge = "nodes";
    default = { };
    description = ''
      Machines given as images { kernel; initrd; disk ? null; memory ? 256;
      cpus ? 1; kernelParams ? ""; qemuFlags ? [ ]; vlans ? [ 1 ]; }, as with
      nixpkgs (nix-vmtest's test module has the same option); `nodes` takes
      them too here.
    '';
  };
  defaults = {
    merge = "modules";
    default = [ ];
    description = "NixOS configuration applied to every NixOS node.";
  };
  nodeDefaults = {
    merge = "modules";
    default = [ ];
    description = "Like defaults (nixpkgs has it for QEMU nodes as opposed to containers).";
  };
  extraBaseModules = {
    merge = "modules";
    default = [ ];
    description = "NixOS modules added to every NixOS node's base modules.";
  };
  testScript = {
    merge = "unique";
    type = "script";
    required = true;
    description = "Python test script: a string, or a function of { nodes, ... } returning one.";
  };
  globalTimeout = {
    merge = "unique";
    type = "int";
    default = 3600;
    description = "Seconds after which the whole test is stopped and fails.";
  };
  skipLint = {
    merge = "unique";
    type = "bool";
    default = false;
    description = "Do not lint the test script before running it.";
  };
  skipTypeCheck = {
    merge = "unique";
    type = "bool";
    default = false;
    description = "Do not type-check the test script before running it.";
  };
  enableOCR = {
    merge = "unique";
    type = "bool";
    default = false;
    description = "Make OCR (tesseract) available to get_screen_text and wait_for_text.";
  };
  extraPythonPackages = {
    merge = "pyPkgs";
    default = _: [ ];
    description = "Function from a Python package set to packages the test script imports.";
  };
  interactive = {
    merge = "modules";
    default = [ ];
    description = "Test module merged over this one for .driverInteractive only.";
  };
  passthru = {
    merge = "attrs";
    default = { };
    description = "Attributes added to the result.";
  };
  meta = {
    merge = "attrs";
    default = { };
    description = "The result's meta attributes.";
  };
  hostPkgs = {
    merge = "unique";
    type = "any";
    default = null;
    description = "nixpkgs for the host side (driver, QEMU); runNixOSTest sets it to pkgs.";
  };
  "node.pkgs" = {
    merge = "unique";
    type = "any";
    default = null;
    description = "nixpkgs for the NixOS nodes (default: hostPkgs).";
  };
  "node.pkgsReadOnly" = {
    merge = "unique";
    type = "bool";
    default = null; # node.pkgs != null, worked out in eval-test.nix
    description = "Make the nodes' nixpkgs.* options read-only (default: node.pkgs != null).";
  };
  "node.specialArgs" = {
    merge = "attrs";
    default = { };
    description = "Extra module arguments for the NixOS nodes, usable in imports.";
  };
  "qemu.package" = {
    merge = "unique";
    type = "any";
    default = null;
    description = "QEMU for the NixOS nodes' start scripts (default: hostPkgs.qemu_test).";
  };
  requiredSystemFeatures = {
    merge = "unique";
    type = "strings";
    default = [
      "nixos-test"
      "kvm"
    ];
    description = "System features a builder needs to run the test (nix-vmtest).";
  };
  extraDriverArgs = {
    merge = "list";
    type = "strings";
    default = [ ];
    description = "Extra command-line arguments for nixos-test-driver.";
  };
  snapshots = {
    merge = "unique";
    type = "snapshots";
    default = true;
    description = ''
      Start nodes from booted snapshots (vm-snapshot-<name>-<node>, built
      once per node configuration): true, false, or { <node> = false; }.
      A node given as an attribute set may say snapshot = false; itself.
    '';
  };
}
