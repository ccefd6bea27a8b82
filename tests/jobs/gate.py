"""A file server on 127.0.0.1 for job tests: `/open/<file>` answers at once, `/gated/<tag>/<file>` only
once the test opens gate `tag`. A job downloading a gated file stays RUNNING for as long as the test
wants, with no timing involved (cancel and restart tests)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Gates:
    url: str
    opened: defaultdict[str, threading.Event] = field(default_factory=lambda: defaultdict(threading.Event))
    requested: defaultdict[str, threading.Event] = field(default_factory=lambda: defaultdict(threading.Event))
    """`requested[tag]` is set once a file behind gate `tag` was asked for: its job is RUNNING."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, table: defaultdict[str, threading.Event], tag: str) -> threading.Event:
        with self.lock:
            return table[tag]


@contextlib.contextmanager
def file_server(root: Path) -> Iterator[Gates]:
    gates = Gates("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.lstrip("/").split("/")
            name = parts[-1]
            path = root / name
            if (
                not path.is_file()
                or parts[0] not in ("open", "gated")
                or len(parts) != (2 if parts[0] == "open" else 3)
            ):
                self.send_error(404)
                return
            if parts[0] == "gated":
                gates.event(gates.requested, parts[1]).set()
                if not gates.event(gates.opened, parts[1]).wait(timeout=600):
                    self.send_error(503)
                    return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the server under test may have gone meanwhile
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    gates.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gates
    finally:
        for event in list(gates.opened.values()):
            event.set()
        server.shutdown()
        server.server_close()
