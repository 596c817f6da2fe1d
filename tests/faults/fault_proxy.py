"""A fault-injecting HTTP/1.1 proxy on loopback, written for the fault tests.

It sits between the SDK and the collector and, request by request, either
forwards faithfully or injects one fault from a schedule:

``reset_mid_body``      read part of the request body, then reset the connection
``reset_after_reply``   forward, let the collector process and answer, then reset the
                        client connection instead of relaying the answer (the classic
                        duplicate: the SDK must retry, the collector must dedupe)
``stall``               read the request and never answer (the SDK's read timeout fires)
``trickle``             relay the answer one small chunk at a time, slowly
``refuse``              close the connection as soon as it is accepted

Being HTTP-aware (it frames requests by Content-Length) is what lets a fault
land at a precise point of one exchange instead of at a random byte.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable

FAULTS = ("reset_mid_body", "reset_after_reply", "stall", "trickle", "refuse")


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer sees a TCP RST, not a clean FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_message(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes] | None:
    """Read one HTTP message (head, body) framed by Content-Length; None on EOF."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(buffer) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    body = bytes(buffer[end : end + length])
    del buffer[: end + length]
    return head, body


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``upstream_port``, injecting scheduled faults."""

    def __init__(self, upstream_port: int, *, stall_seconds: float = 5.0) -> None:
        self.upstream_port = upstream_port
        self.stall_seconds = stall_seconds
        self.schedule: list[str] = []
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept_loop, daemon=True, name="fault-proxy").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/batches"

    def inject(self, faults: Iterable[str]) -> None:
        """Queue faults; each applies to one request (or connection, for ``refuse``)."""
        with self._lock:
            for fault in faults:
                if fault not in FAULTS:
                    raise ValueError(f"unknown fault {fault!r}")
                self.schedule.append(fault)

    def pending(self) -> int:
        with self._lock:
            return len(self.schedule)

    def _next_fault(self) -> str | None:
        """The fault for the request that just arrived (``refuse`` is left for the
        accept loop: the connection is dropped so the client has to reconnect)."""
        with self._lock:
            if not self.schedule:
                return None
            if self.schedule[0] == "refuse":
                return "refuse"
            fault = self.schedule.pop(0)
            self.injected[fault] += 1
            return fault

    def _peek_refuse(self) -> bool:
        with self._lock:
            if self.schedule and self.schedule[0] == "refuse":
                self.schedule.pop(0)
                self.injected["refuse"] += 1
                return True
            return False

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._peek_refuse():
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        inbound, outbound = bytearray(), bytearray()
        try:
            while True:
                request = _read_message(client, inbound)
                if request is None:
                    return
                head, body = request
                fault = self._next_fault()
                if fault == "refuse":
                    _reset(client)  # a kept-alive connection dies; the reconnect is refused
                    return
                if fault == "reset_mid_body":
                    _reset(client)  # the SDK sees the connection die while it sends
                    return
                if fault == "stall":
                    time.sleep(self.stall_seconds)
                    _reset(client)
                    return
                if upstream is None:
                    upstream = socket.create_connection(
                        ("127.0.0.1", self.upstream_port), timeout=60
                    )
                upstream.sendall(head + body)
                response = _read_message(upstream, outbound)
                if response is None:
                    _reset(client)
                    return
                with self._lock:
                    self.forwarded += 1
                if fault == "reset_after_reply":
                    _reset(client)  # processed upstream, answer never arrives
                    return
                data = response[0] + response[1]
                if fault == "trickle":
                    for i in range(0, len(data), 16):
                        client.sendall(data[i : i + 16])
                        time.sleep(0.002)
                else:
                    client.sendall(data)
        except OSError:
            _reset(client)
        finally:
            if upstream is not None:
                upstream.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
