# Arguments builtins.vmTest must refuse at evaluation, one attribute each
# (`nix-instantiate eval-errors.nix -A <case>`); tests/plugin.rs checks the
# messages.
let
  script = ./fixtures/run-machine-vm;
  good = {
    name = "eval-error";
    nodes.machine = script;
    testScript = ''
      machine.succeed("true")
    '';
  };
in
{
  missingName = builtins.vmTest (builtins.removeAttrs good [ "name" ]);
  missingNodes = builtins.vmTest (builtins.removeAttrs good [ "nodes" ]);
  nodesNotAttrs = builtins.vmTest (good // { nodes = [ script ]; });
  nodeWrongType = builtins.vmTest (good // { nodes.server = 42; });
  nodeNixosModule = builtins.vmTest (good // { nodes.server = { pkgs, ... }: { }; });
  imageMissingInitrd = builtins.vmTest (good // { nodes.server = { kernel = script; }; });
  imageTypo = builtins.vmTest (good // { nodes.server = { kernel = script; initrd = script; memroy = 256; }; });
  imageOutsideStore = builtins.vmTest (good // { nodes.server = { kernel = "/boot/vmlinuz"; initrd = script; }; });
  unknownArgument = builtins.vmTest (good // { testscript = "x"; });
  nameNotString = builtins.vmTest (good // { name = 3; });
  timeoutNotInt = builtins.vmTest (good // { globalTimeout = "1h"; });
  scriptSyntax = builtins.vmTest (good // {
    testScript = ''
      machine.succeed("true")
      if True
          machine.succeed("false")
    '';
  });
  scriptUnknownMachine = builtins.vmTest (good // {
    nodes = { server = script; client = script; };
    testScript = ''
      start_all()
      server.succeed("true")
      servr.succeed("true")
    '';
  });
  scriptFunctionUnknownMachine = builtins.vmTest (good // {
    testScript = { nodes }: ''
      machine.succeed("true")
      ${builtins.concatStringsSep "\n" (map (n: "${n}x.succeed('true')") (builtins.attrNames nodes))}
    '';
  });
}
