# nodes: machine=tiny
# expect: pass
# expect-log: waiting for TCP port 1234 on localhost
# expect-log: waiting for TCP port 1234 on localhost to be closed
# wait_for_open_port / wait_for_closed_port with busybox `nc -l` on the tiny
# guest; the listener goes away after one connection.
start_all()
machine.wait_for_closed_port(1234, timeout=30)
machine.succeed("nc -l -p 1234 </dev/null >/tmp/got 2>&1 &")
machine.wait_for_open_port(1234)
# Connecting ends the one-shot listener (the probe may already have done so).
machine.execute("echo bye | nc -w 2 127.0.0.1 1234", check_return=False)
machine.wait_for_closed_port(1234)

# A listener (busybox httpd) on another address than localhost.
machine.succeed("ip addr add 10.0.0.1/32 dev lo")
machine.succeed("httpd -p 10.0.0.1:2345 -h /tmp")
machine.wait_for_open_port(2345, addr="10.0.0.1")
machine.fail("nc -w 1 127.0.0.1 2345 </dev/null")
machine.succeed("pkill httpd")
machine.wait_for_closed_port(2345, addr="10.0.0.1", timeout=60)
