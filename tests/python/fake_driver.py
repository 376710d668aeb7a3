"""A fake nixos-test-driver: serves Contract 3 on one end of a socketpair from
a thread, records every request, answers from per-op handlers."""

import json
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON_DIR = os.path.join(ROOT, "python")
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)


class Err:
    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message


class WithBytes:
    def __init__(self, value: Any, data: bytes) -> None:
        self.value, self.data = value, data


class NoReply:
    """The handler answers later (through FakeDriver.send_reply)."""


def encode_reply(rid: Any, result: Any) -> bytes:
    if isinstance(result, Err):
        return (json.dumps({"id": rid, "err": {"kind": result.kind, "message": result.message}}) + "\n").encode()
    if isinstance(result, WithBytes):
        head = json.dumps({"id": rid, "ok": result.value, "bytes": len(result.data)}) + "\n"
        return head.encode() + result.data
    return (json.dumps({"id": rid, "ok": result}) + "\n").encode()


class CountingSocket:
    """The client's end: counts the request lines sent, so that the fake can
    wait for requests that get no reply (log lines) before it is asked."""

    def __init__(self, sock: socket.socket, fake: "FakeDriver") -> None:
        self._sock, self._fake = sock, fake

    def sendall(self, data: bytes) -> None:
        with self._fake.count_lock:
            self._fake.sent += data.count(b"\n")
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class FakeDriver:
    def __init__(
        self,
        machines: Optional[List[Any]] = None,
        vlans: Optional[List[int]] = None,
        out_dir: str = "/tmp/nix-vmtest-fake-out",
        sock: Optional[socket.socket] = None,
    ) -> None:
        if machines is None:
            machines = [("machine", [1])]
        self.machines = [m if isinstance(m, tuple) else (m, [1]) for m in machines]
        self.vlans = [1] if vlans is None else vlans
        self.out_dir = out_dir
        if sock is None:
            self.client_sock, self.server_sock = socket.socketpair()
        else:
            self.client_sock, self.server_sock = None, sock
        self.requests: List[Dict[str, Any]] = []
        self.commands: Dict[str, Any] = {}  # command -> (status, bytes) or callable(req)
        self.handlers: Dict[str, Callable[[Dict[str, Any]], Any]] = {}
        self.send_lock = threading.Lock()
        self.count_lock = threading.Lock()
        self.sent = 0  # request lines the client sent through CountingSocket
        self.received = 0  # request lines read (`requests` may be cleared)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    # what the client sent
    def caught_up(self, timeout: float = 5.0) -> None:
        """Waits until every request the client sent has been recorded."""
        deadline = time.monotonic() + timeout
        while self.received < self.sent and time.monotonic() < deadline:
            time.sleep(0.001)

    def ops(self, exclude_logs: bool = False) -> List[str]:
        self.caught_up()
        logs = {"log", "log_begin", "log_end"}
        return [r["op"] for r in self.requests if not (exclude_logs and r["op"] in logs)]

    def of(self, op: str) -> List[Dict[str, Any]]:
        self.caught_up()
        return [r for r in self.requests if r["op"] == op]

    def log_lines(self) -> List[str]:
        self.caught_up()
        out = []
        for r in self.requests:
            if r["op"] == "log":
                out.append(r["args"]["message"])
            elif r["op"] == "log_begin":
                out.append("BEGIN " + r["args"]["message"])
            elif r["op"] == "log_end":
                out.append("END")
        return out

    def send_reply(self, rid: Any, result: Any) -> None:
        with self.send_lock:
            self.server_sock.sendall(encode_reply(rid, result))

    def send_raw(self, data: bytes) -> None:
        with self.send_lock:
            self.server_sock.sendall(data)

    def close(self) -> None:
        for s in (self.client_sock, self.server_sock):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self.thread.join(5)

    # defaults
    def _default(self, req: Dict[str, Any]) -> Any:
        op = req["op"]
        if op == "hello":
            return {
                "machines": [{"name": n, "vlans": v} for n, v in self.machines],
                "vlans": self.vlans,
                "out_dir": self.out_dir,
                "interactive": False,
            }
        if op == "execute":
            cmd = req["args"]["command"]
            res = self.commands.get(cmd, (0, b""))
            if callable(res):
                res = res(req)
            if isinstance(res, (Err, WithBytes)):
                return res
            status, out = res
            return WithBytes({"status": status}, out if isinstance(out, bytes) else out.encode())
        if op == "is_up":
            return False
        if op == "status":
            d = f"/tmp/nix-vmtest-fake/{req['machine']}"
            return {"booted": False, "connected": False, "pid": None, "state_dir": d,
                    "shared_dir": d + "/shared", "tmp_dir": "/tmp/nix-vmtest-fake"}
        if op == "create_machine":
            return {"name": req["args"]["name"] or "created"}
        return None

    def _serve(self) -> None:
        f = self.server_sock.makefile("rb")
        try:
            for line in f:
                req = json.loads(line)
                self.requests.append(req)
                self.received += 1
                handler = self.handlers.get(req["op"], self._default)
                result = handler(req)
                if isinstance(result, NoReply) or req.get("noreply"):
                    continue
                self.send_reply(req["id"], result)
        except (OSError, ValueError):
            pass
        finally:
            self.done.set()


def make_client(fake: FakeDriver) -> Any:
    from nix_vmtest.rpc import Client

    return Client(CountingSocket(fake.client_sock, fake))


def make_driver(fake: FakeDriver, source: str = "", path: str = "<test>") -> Any:
    from nix_vmtest.driver import Driver

    client = make_client(fake)
    hello = client.call("hello", None, {})
    return Driver(client, hello, path, source)
