"""A TCP relay that cuts a worker's wire right after its broker handed it a given task.

The contract suite starts a worker whose broker (or database) URL points at a :class:`WireCutter`
instead of the service. The relay forwards both ways until the service sends bytes holding the
armed needle (a task id: the reply that hands that task to the worker); that reply is held back and
nothing passes any more, the connections staying open. On the service's side the task has been
taken (popped, moved to an in-flight list, delivered unacked, or claimed); the worker never learns
of it, so it cannot start it. The test then SIGKILLs the worker: the deterministic form of "killed
between taking a job and starting it", on any broker with a TCP wire, without knowing its keys.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit

__all__ = ["WireCutter"]


class WireCutter:
    """Relay ``127.0.0.1:<port>`` to the host and port of ``target_url``."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 0)
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
        self.url = parts._replace(netloc=netloc).geturl()
        """The URL to give the worker instead of ``target_url``."""
        self.cut = threading.Event()
        """Set once the needle went by: from then on nothing is forwarded."""
        self._needle: bytes | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="wire-accept").start()

    def arm(self, needle: str) -> None:
        """Cut the wire at the first reply of the service that holds ``needle``."""
        self._needle = needle.encode()

    def close(self) -> None:
        self.cut.set()
        with self._lock:
            for s in [self.listener, *self._sockets]:
                with contextlib.suppress(OSError):
                    s.close()
            self._sockets.clear()

    def __enter__(self) -> WireCutter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_service: bool) -> None:
        """Forward ``src`` to ``dst``; once cut, read and drop (the wire is dead, not closed).
        When either side closes (the worker was killed), close both: the service sees it go."""
        tail = b""
        try:
            while data := src.recv(65536):
                if from_service and self._needle is not None and not self.cut.is_set():
                    if self._needle in tail + data:
                        self.cut.set()
                    tail = (tail + data)[-len(self._needle) :]
                if not self.cut.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()
