"""A TCP proxy the chaos tests own (loopback only): it forwards every connection to one
upstream port and can drop them all at once, as a network fault or a load balancer's
reset would. One thread accepts; two threads per connection copy bytes."""

from __future__ import annotations

import socket
import threading

CHUNK = 65536


class TcpProxy:
    """127.0.0.1:`port` -> 127.0.0.1:`upstream`; `drop()` resets every open connection."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.drops = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()  # upstream down: the client sees the connection refused at once
                continue
            with self._lock:
                self._open.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            with self._lock:
                self._open.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def drop(self) -> int:
        """Reset every open connection; how many there were."""
        with self._lock:
            socks = list(self._open)
        self._close(*socks)
        self.drops += 1
        return len(socks) // 2

    def close(self) -> None:
        self._listener.close()
        self.drop()
