"""JSON-lines client for the driver's script protocol (docs/contracts.md, Contract 3).

Request, one line:  ``{"id": 7, "op": "execute", "machine": "server", "args": {...}}``
Reply, one line:    ``{"id": 7, "ok": <value>}`` or
                    ``{"id": 7, "err": {"kind": "...", "message": "..."}}``;
a reply with ``"bytes": N`` at the top level is followed by exactly N raw bytes.

The client is safe to use from several threads: writes are serialised by a
lock, one thread at a time reads from the socket and files replies by id, so
calls from different threads may be outstanding at once (the driver may
answer them in any order).

Ctrl-C (``KeyboardInterrupt``) while waiting for a reply sends
``{"id": <new>, "op": "cancel", "machine": null, "args": {"id": <id>}}``,
keeps reading until the reply to the original id arrives (a third Ctrl-C
gives up waiting), then re-raises ``KeyboardInterrupt``. The driver sends
no reply to the ``cancel`` request itself (one that came would be dropped).
"""

import json
import socket
import threading
from typing import Any, Dict, Optional, Set, Tuple

from .errors import ProtocolError, error_from_reply

__all__ = ["Client"]


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._id_lock = threading.Lock()
        self._next_id = 1
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: Dict[int, Tuple[Dict[str, Any], Optional[bytes]]] = {}
        self._discard: Set[int] = set()
        self._reader: Optional[int] = None
        self._broken: Optional[BaseException] = None

    @classmethod
    def from_fd(cls, fd: int) -> "Client":
        return cls(socket.socket(fileno=fd))

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    # -- public ---------------------------------------------------------
    def call(self, op: str, machine: Optional[str] = None, args: Optional[Dict[str, Any]] = None) -> Any:
        """Send one request and return the reply's ``ok`` value."""
        return self.call_bytes(op, machine, args)[0]

    def notify(self, op: str, machine: Optional[str] = None, args: Optional[Dict[str, Any]] = None) -> None:
        """Send a request that gets no reply (log lines): the driver handles
        requests in order, so it is done before any later call."""
        request = self._request(self._new_id(), op, machine, args)
        request["noreply"] = True
        self._send(request)

    def call_bytes(
        self, op: str, machine: Optional[str] = None, args: Optional[Dict[str, Any]] = None
    ) -> Tuple[Any, Optional[bytes]]:
        """Send one request; return ``(ok value, raw bytes or None)``."""
        rid = self._new_id()
        self._send(self._request(rid, op, machine, args))
        try:
            msg, data = self._wait(rid)
        except KeyboardInterrupt:
            self._interrupted(rid)
            raise
        if "err" in msg and msg["err"] is not None:
            raise error_from_reply(msg["err"])
        return msg.get("ok"), data

    # -- internals ------------------------------------------------------
    @staticmethod
    def _request(
        rid: int, op: str, machine: Optional[str], args: Optional[Dict[str, Any]]
    ) -> Dict[str, Any]:
        return {"id": rid, "op": op, "machine": machine, "args": args if args is not None else {}}

    def _new_id(self) -> int:
        with self._id_lock:
            rid = self._next_id
            self._next_id += 1
            return rid

    def _send(self, obj: Dict[str, Any]) -> None:
        # Not ASCII-escaped: a string that is no UTF-8 (a lone surrogate)
        # raises UnicodeEncodeError here, as in nixpkgs' driver, instead of
        # reaching the driver as JSON it cannot read.
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        line = (text + "\n").encode("utf-8")
        with self._send_lock:
            try:
                self._sock.sendall(line)
            except OSError as e:
                raise ProtocolError(f"lost the connection to the driver: {e}") from None

    def _interrupted(self, rid: int) -> None:
        """Ctrl-C while waiting for ``rid``: ask the driver to cancel it and
        wait for its (now meaningless) reply so the stream stays in step."""
        for _attempt in range(3):
            cid = self._new_id()
            with self._cond:
                self._discard.add(cid)
            try:
                self._send(self._request(cid, "cancel", None, {"id": rid}))
                self._wait(rid)
                return
            except KeyboardInterrupt:
                continue
            except Exception:
                return
        with self._cond:  # give up: drop the reply whenever it comes
            self._discard.add(rid)
            self._replies.pop(rid, None)

    def _wait(self, rid: int) -> Tuple[Dict[str, Any], Optional[bytes]]:
        # The reader is a thread id, not a flag: an interrupt may come between
        # a thread's claim and its read (Python checks for signals between
        # any two bytecodes). The handler below then frees the claim, and a
        # claim the same thread left behind is its own again.
        me = threading.get_ident()
        while True:
            broken: Optional[BaseException] = None
            try:
                with self._cond:
                    while True:
                        if rid in self._replies:
                            return self._replies.pop(rid)
                        if self._broken is not None:
                            broken = self._broken
                            break
                        if self._reader is None or self._reader == me:
                            self._reader = me
                            break
                        self._cond.wait()
                if broken is not None:
                    raise ProtocolError(str(broken))
                msg, data = self._read_message()
            except BaseException as e:
                with self._cond:
                    if self._reader == me:
                        self._reader = None
                    if broken is None and not isinstance(e, KeyboardInterrupt):
                        self._broken = e
                    self._cond.notify_all()
                if isinstance(e, (OSError, ValueError)) and not isinstance(e, ProtocolError):
                    raise ProtocolError(f"bad message from the driver: {e}") from e
                raise
            with self._cond:
                self._reader = None
                mid = msg.get("id")
                if mid in self._discard:
                    self._discard.discard(mid)
                elif mid is not None:
                    self._replies[mid] = (msg, data)
                self._cond.notify_all()

    def _read_message(self) -> Tuple[Dict[str, Any], Optional[bytes]]:
        """Read one reply (header line + optional raw bytes). Partial data stays
        in the buffer, so an interrupt between reads loses nothing."""
        header: Optional[Dict[str, Any]] = None
        nl = -1
        while True:
            if header is None:
                nl = self._buf.find(b"\n")
                if nl >= 0:
                    header = json.loads(bytes(self._buf[:nl]).decode("utf-8"))
                    if not isinstance(header, dict):
                        raise ProtocolError(f"reply is not an object: {header!r}")
            if header is not None:
                n = header.get("bytes")
                if n is None:
                    del self._buf[: nl + 1]
                    return header, None
                if not isinstance(n, int) or n < 0:
                    raise ProtocolError(f"bad byte count in reply: {n!r}")
                end = nl + 1 + n
                if len(self._buf) >= end:
                    data = bytes(self._buf[nl + 1 : end])
                    del self._buf[:end]
                    return header, data
                want = end - len(self._buf)
            else:
                want = 65536
            chunk = self._sock.recv(max(65536, min(want, 1 << 22)))
            if not chunk:
                raise ProtocolError("the driver closed the connection")
            self._buf += chunk
