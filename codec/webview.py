"""A local web server for the browser decoder (web/): ``onic view FILE``.

It serves, from one origin,
- ``/`` the demo page and ``/src/``, ``/node_modules/`` its modules (the repository's web/,
  after ``npm ci`` there);
- ``/models/default/`` the model bundle the page decodes with;
- ``/files/N/NAME`` the files given on the command line, listed in ``/files.json`` so
  that the page opens them at once.

Every response carries the cross-origin isolation headers (COOP/COEP), which let
onnxruntime-web run its WebAssembly on several threads. Nothing outside these
folders and files is served.
"""

from __future__ import annotations

import json
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from codec.bitstream import OnicError

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".onnx": "application/octet-stream", ".npz": "application/octet-stream", ".json": "application/json",
         ".html": "text/html; charset=utf-8", ".onic": "application/octet-stream", ".css": "text/css"}


def web_dir() -> Path:
    """web/ of a source checkout with its npm packages installed, or a one-line error."""
    if not (WEB_DIR / "index.html").is_file():
        raise OnicError("the web decoder is not installed: `onic view` runs from a source checkout of onic "
                        "(its web/ folder)")
    if not (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir():
        raise OnicError(f"the web decoder's packages are missing: run `npm ci` in {WEB_DIR}")
    return WEB_DIR


def _inside(root: Path, relative: str) -> Path | None:
    """root/relative if it stays inside root (no .. or symlink escapes) and is a file."""
    path = (root / relative).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        return None
    return path if path.is_file() else None


def make_server(files: list[Path], bundle: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) for the page, the bundle and ``files``."""
    web = web_dir()
    files = [Path(f).resolve() for f in files]
    listing = json.dumps([{"name": f.name, "url": f"/files/{i}/{f.name}"} for i, f in enumerate(files)]).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the page reports what matters
            pass

        def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _resolve(self, path: str) -> Path | None:
            if path in ("/", "/index.html"):
                return web / "index.html"
            if path.startswith("/models/default/"):
                return _inside(bundle, path[len("/models/default/"):])
            if path.startswith("/files/"):
                index, _, _ = path[len("/files/"):].partition("/")
                return files[int(index)] if index.isdigit() and int(index) < len(files) else None
            if path.startswith(("/src/", "/node_modules/")) or path == "/demo.js":
                return _inside(web, path.lstrip("/"))
            return None

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            if path == "/files.json":
                return self._send(listing, "application/json")
            target = self._resolve(path)
            if target is None:
                return self._send(b"not found", "text/plain", 404)
            try:
                body = target.read_bytes()
            except OSError:
                return self._send(b"cannot read", "text/plain", 404)
            kind = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            self._send(body, kind)

        do_HEAD = do_GET

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_background(files: list[Path], bundle: Path) -> tuple[ThreadingHTTPServer, str]:
    """Start a server on a free port in a daemon thread: (server, its base URL)."""
    server = make_server(files, bundle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}/"
