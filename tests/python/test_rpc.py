import json
import os
import signal
import threading
import time
import unittest

from tests.python.fake_driver import Err, FakeDriver, NoReply, WithBytes, make_client

from nix_vmtest import errors


class RpcFraming(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeDriver()
        self.client = make_client(self.fake)

    def tearDown(self) -> None:
        self.fake.close()

    def test_request_shape(self) -> None:
        self.client.call("log", None, {"message": "hi"})
        self.client.call("is_up", "server", {})
        r1, r2 = self.fake.requests
        self.assertEqual(r1, {"id": r1["id"], "op": "log", "machine": None, "args": {"message": "hi"}})
        self.assertEqual(r2["machine"], "server")
        self.assertEqual(r2["args"], {})
        self.assertNotEqual(r1["id"], r2["id"])

    def test_bytes_payload_with_newlines_and_non_utf8(self) -> None:
        payload = b"line1\nline2\n\xff\xfe{\"id\": 99}\n"
        self.fake.handlers["x"] = lambda req: WithBytes({"status": 0}, payload)
        value, data = self.client.call_bytes("x")
        self.assertEqual(value, {"status": 0})
        self.assertEqual(data, payload)
        # the stream is still in step afterwards
        self.assertIsNone(self.client.call("log", None, {"message": "after"}))

    def test_zero_bytes_and_no_bytes(self) -> None:
        self.fake.handlers["x"] = lambda req: WithBytes(1, b"")
        self.assertEqual(self.client.call_bytes("x"), (1, b""))
        self.fake.handlers["y"] = lambda req: 2
        self.assertEqual(self.client.call_bytes("y"), (2, None))

    def test_large_payload(self) -> None:
        payload = os.urandom(2 * 1024 * 1024 + 7)
        self.fake.handlers["x"] = lambda req: WithBytes(None, payload)
        t0 = time.monotonic()
        _, data = self.client.call_bytes("x")
        self.assertEqual(data, payload)
        self.assertLess(time.monotonic() - t0, 2.0)

    def test_reply_split_across_writes(self) -> None:
        def later(req):
            def send():
                head = json.dumps({"id": req["id"], "ok": "v", "bytes": 5}).encode()
                for piece in (head[:3], head[3:] + b"\nab", b"c", b"de"):
                    self.fake.send_raw(piece)
                    time.sleep(0.02)
            threading.Thread(target=send).start()
            return NoReply()

        self.fake.handlers["x"] = later
        self.assertEqual(self.client.call_bytes("x"), ("v", b"abcde"))

    def test_error_kinds(self) -> None:
        cases = {
            "assertion": (errors.RequestedAssertionFailed, AssertionError),
            "timeout": (errors.MachineTimeout, errors.RequestedAssertionFailed),
            "machine": (errors.MachineError, errors.TestScriptError),
            "usage": (errors.UsageError, ValueError),
            "unsupported": (errors.Unsupported, NotImplementedError),
            "cancelled": (errors.Cancelled, errors.TestScriptError),
        }
        for kind, (cls, base) in cases.items():
            self.fake.handlers["x"] = lambda req, kind=kind: Err(kind, f"the {kind} message")
            with self.assertRaises(cls) as cm:
                self.client.call("x")
            self.assertIsInstance(cm.exception, base)
            self.assertEqual(str(cm.exception), f"the {kind} message")
        self.fake.handlers["x"] = lambda req: Err("weird", "m")
        with self.assertRaises(errors.MachineError):
            self.client.call("x")

    def test_threads_out_of_order_replies(self) -> None:
        pending = {}

        def hold(req):
            pending[req["args"]["n"]] = req["id"]
            if len(pending) == 3:  # answer in reverse order
                for n in (2, 1, 0):
                    self.fake.send_reply(pending[n], n * 10)
            return NoReply()

        self.fake.handlers["x"] = hold
        results = {}

        def worker(n):
            results[n] = self.client.call("x", None, {"n": n})

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(5)
        self.assertEqual(results, {0: 0, 1: 10, 2: 20})

    def test_closed_connection_raises(self) -> None:
        self.fake.handlers["x"] = lambda req: (self.fake.server_sock.shutdown(2), NoReply())[1]
        with self.assertRaises(errors.ProtocolError):
            self.client.call("x")

    def interrupted_wait_for_unit(self) -> None:
        """Calls wait_for_unit and sends this process SIGINT 0.2 s later, as
        Ctrl-C in the REPL does; the call must raise KeyboardInterrupt."""
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            with self.assertRaises(KeyboardInterrupt):
                self.client.call("wait_for_unit", "m", {"unit": "x"})
        finally:
            signal.signal(signal.SIGINT, old)

    def test_ctrl_c_sends_cancel_and_waits_for_reply(self) -> None:
        def slow(req):
            return NoReply()

        def cancel(req):
            target = req["args"]["id"]
            threading.Timer(0.1, self.fake.send_reply, (target, Err("machine", "cancelled"))).start()
            return None

        self.fake.handlers["wait_for_unit"] = slow
        self.fake.handlers["cancel"] = cancel
        self.interrupted_wait_for_unit()
        wait_req, cancel_req = self.fake.requests[-2:]
        self.assertEqual(cancel_req["op"], "cancel")
        self.assertIsNone(cancel_req["machine"])
        self.assertEqual(cancel_req["args"], {"id": wait_req["id"]})
        # both replies were consumed; the next call works
        self.assertIsNone(self.client.call("log", None, {"message": "still fine"}))

    def test_ctrl_c_rust_style_cancel_without_its_own_reply(self) -> None:
        """The driver answers the interrupted call with kind `cancelled` and
        does not answer the `cancel` request itself."""
        def cancel(req):
            self.fake.send_reply(req["args"]["id"], Err("cancelled", "wait_for_unit was interrupted"))
            return NoReply()

        self.fake.handlers["wait_for_unit"] = lambda req: NoReply()
        self.fake.handlers["cancel"] = cancel
        self.interrupted_wait_for_unit()
        self.assertIs(self.client.call("is_up", "m", {}), False)


if __name__ == "__main__":
    unittest.main()
