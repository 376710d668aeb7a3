# nodes: my-node=tiny other.node=tiny
# expect: pass
# A node named `my-node` is the global `my_node` (every [^A-Za-z0-9_] → `_`);
# with two machines there is no `machine` alias.
start_all()
t.assertEqual(my_node.name, "my-node")
t.assertEqual(other_node.name, "other.node")
t.assertEqual(sorted(m.name for m in machines), ["my-node", "other.node"])
t.assertEqual(my_node.succeed("hostname").strip(), "my-node")
other_node.succeed("true")
t.assertNotIn("machine", globals())
try:
    machine  # noqa: F821
except NameError:
    pass
else:
    raise Exception("`machine` is defined with two machines")
