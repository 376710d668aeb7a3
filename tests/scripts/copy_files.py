# nodes: machine=tiny
# expect: pass
# copy_from_host (through the shared directory) and copy_from_machine (into
# the output directory), checked from the host side with `os`.
import hashlib
import tempfile

start_all()
out_dir = driver.out_dir
t.assertTrue(os.path.isabs(out_dir), out_dir)

with subtest("copy_from_host: a file"):
    src_dir = tempfile.mkdtemp(prefix="copy-src-")
    src = os.path.join(src_dir, "hello.txt")
    data = os.urandom(100_000)
    with open(src, "wb") as f:
        f.write(data)
    machine.copy_from_host(src, "/tmp/in/hello.txt")
    guest_sum = machine.succeed("sha256sum /tmp/in/hello.txt").split()[0]
    t.assertEqual(guest_sum, hashlib.sha256(data).hexdigest())

with subtest("copy_from_host: a directory"):
    os.makedirs(os.path.join(src_dir, "tree", "sub"))
    with open(os.path.join(src_dir, "tree", "sub", "leaf"), "w") as f:
        f.write("leaf-content\n")
    machine.copy_from_host(os.path.join(src_dir, "tree"), "/tmp/tree")
    t.assertEqual(machine.succeed("cat /tmp/tree/sub/leaf"), "leaf-content\n")

with subtest("copy_from_host_via_shell"):
    machine.copy_from_host_via_shell(src, "/tmp/via/shell.bin")
    t.assertEqual(machine.succeed("sha256sum /tmp/via/shell.bin").split()[0],
                  hashlib.sha256(data).hexdigest())

with subtest("copy_from_machine"):
    machine.succeed("mkdir -p /tmp/res && echo from-guest > /tmp/res/result.txt")
    machine.copy_from_machine("/tmp/res/result.txt")
    host = os.path.join(out_dir, "result.txt")
    t.assertTrue(os.path.isfile(host), os.listdir(out_dir))
    with open(host) as f:
        t.assertEqual(f.read(), "from-guest\n")

with subtest("copy_from_machine into a subdirectory, and copy_from_vm"):
    machine.succeed("head -c 65536 /dev/urandom > /tmp/res/blob")
    guest_sum = machine.succeed("sha256sum /tmp/res/blob").split()[0]
    machine.copy_from_machine("/tmp/res/blob", "sub/dir")
    with open(os.path.join(out_dir, "sub", "dir", "blob"), "rb") as f:
        t.assertEqual(hashlib.sha256(f.read()).hexdigest(), guest_sum)
    machine.copy_from_vm("/tmp/res", "whole")
    t.assertTrue(os.path.isfile(os.path.join(out_dir, "whole", "res", "result.txt"))
                 or os.path.isfile(os.path.join(out_dir, "whole", "result.txt")),
                 str(list(os.walk(os.path.join(out_dir, "whole")))))
