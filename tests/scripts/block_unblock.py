# nodes: a=tiny@1 b=tiny@1
# expect: pass
# Two nodes on VLAN 1 (192.168.1.1 and .2): ping works, block() takes a's
# link down (ping fails), unblock() brings it back; the same through vlan1.
start_all()
log.info("a's links: " + a.execute("ip link; cat /sys/class/net/*/address")[1])
a.wait_until_succeeds("ip addr show | grep -q 'inet 192.168.1.1/24'", timeout=120)
b.wait_until_succeeds("ip addr show | grep -q 'inet 192.168.1.2/24'", timeout=120)
t.assertRegex(a.succeed("cat /etc/hosts"), r"192\.168\.1\.2\s+b\b")

with subtest("connected"):
    a.wait_until_succeeds("ping -c 1 -W 2 192.168.1.2", timeout=120)
    b.succeed("ping -c 1 -W 2 a")

with subtest("machine.block"):
    a.block()
    a.fail("ping -c 2 -W 2 192.168.1.2")
    b.fail("ping -c 2 -W 2 192.168.1.1")
    a.unblock()
    a.wait_until_succeeds("ping -c 1 -W 2 192.168.1.2", timeout=60)

with subtest("vlan1.block"):
    vlan1.block(b)
    a.fail("ping -c 2 -W 2 192.168.1.2")
    vlan1.unblock("b")
    a.wait_until_succeeds("ping -c 1 -W 2 192.168.1.2", timeout=60)
