"""A TCP proxy that the fault tests put between the workers and the PostgreSQL server, and cut.

`cut()` does what a server restart does to its clients: every open connection is dropped and new
ones are refused (the listening socket closes) until `restore()` listens on the same port again.
Importable from any test (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

from sqlalchemy.engine import make_url


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target`, one pair of pump threads per connection."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.cuts = 0

    @classmethod
    def to(cls, url: str) -> tuple["TcpProxy", str]:
        """A proxy to the server of a PostgreSQL URL, and the same URL through the proxy."""
        parsed = make_url(url)
        proxy = cls(parsed.host or "127.0.0.1", parsed.port or 5432)
        return proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut() or close()
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src, dst)

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets -= set(socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self.cuts += 1
        self._shut()

    def _shut(self) -> None:
        try:  # wakes the thread blocked in accept(); close() alone leaves the socket listening until it returns
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            open_now = list(self._sockets)
        self._drop(*open_now)

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        for _ in range(50):  # the port can take a moment to be free again
            try:
                self._listener = self._listen(self.port)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"could not listen on port {self.port} again")

    def cut_for(self, seconds: float, when: Callable[[], bool] = lambda: True, poll_s: float = 0.1) -> threading.Thread:
        """In the background: once `when()` is true, cut for `seconds`, then restore."""

        def outage() -> None:
            while not when():
                time.sleep(poll_s)
            self.cut()
            time.sleep(seconds)
            self.restore()

        thread = threading.Thread(target=outage, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._shut()
