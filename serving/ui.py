"""`tbps ui`: the search page, a small Starlette app over the served `person_search` ensemble.

    tbps ui --gallery GALLERY_FILE | --root IMAGES  [--url 127.0.0.1:8001 ...] [--port 8080]
            [--accounts USERS | --trust-user-header X-Forwarded-User] [--key-file KEY] [--tls-ca PEM]

Routes: `/` the page (ui_static/: plain HTML and a little JavaScript);
`/api/search?text=...&k=...` (or `like=INDEX`: more like that gallery item) the hits exactly as
`tbps search --json` prints them, one entry per `text` or `like` (repeatable), with the filter
`camera` (repeatable: any of), `since`, `until` (ISO 8601); `POST /api/search/image?k=...`
the same for the image file that is the request's body (at most 16 MB); `/api/options` the
gallery's camera names and that limit; `/thumb/PATH` a thumbnail of a gallery image (made once,
cached on disk) and `/image/PATH` the image itself. PATH is a hit's `path`, relative to the
gallery's image root: a file is served only if it resolves, symlinks followed, to an image
inside that root; anything else is a 404. The page keeps its query and filters in its URL
(?q=...&k=...&camera=...&since=...&until=..., or ?like=INDEX&...), so a search can be shared
and reloaded; an uploaded image is the one query no URL can hold.

With `--accounts` (or a trusted proxy's user header) every route but the login page and the
static files needs a user (serving/ui_auth.py): `/login` (GET the form, POST name and
password), `POST /logout`; `/api/options` then also says who is logged in and the session's
CSRF token, which every POST sends back. The page queries the server with its own credentials
(`--key-file`, TLS), naming the user and their address for the server's audit trail.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import os
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from PIL import Image

from serving.client import NO_CREDENTIALS, AsyncSearchClient, Credentials, Filter, SearchError
from serving.ui_auth import COOKIE, CSRF_HEADER, IDLE_S, PageAuth

if TYPE_CHECKING:
    from starlette.applications import Starlette

STATIC = Path(__file__).with_name("ui_static")
DEFAULT_URL = "127.0.0.1:8001"
THUMB_BOX = (128, 256)  # width, height: person crops are tall; PIL only ever shrinks to fit
MAX_K = 500             # a grid larger than this is no page to look at
LIVE_TIMEOUT_S = 2.0    # the liveness probe that tells "server down" from "query refused"
# the server's own limit (serving/models/images.py): a larger upload is refused before it is forwarded
MAX_IMAGE_BYTES = 16 << 20
INDEX = re.compile(r"[0-9]{1,18}")  # a gallery index as hits give it, and nothing int() would also take
# the page loads nothing but its own files; no inline script can run even if text slipped into HTML
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'", "X-Content-Type-Options": "nosniff"}


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tbps" / "thumbnails"


class ImageRoot:
    """The gallery's image folder; `find` is the only way a request's path reaches the file system."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")

    def find(self, rel: str) -> Path | None:
        """The file `rel` names inside the root, or None: absolute, escaping (`..`, a symlink
        pointing out), missing or not a regular file. Containment is checked on the resolved path."""
        if not rel or "\0" in rel or PurePosixPath(rel).is_absolute():
            return None
        try:
            path = (self.root / rel).resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop
            return None
        return path if path.is_relative_to(self.root) and path.is_file() else None


class Thumbnails:
    """JPEG thumbnails under `folder`, keyed by the image's resolved path, mtime and size (a
    changed image gets a new one); written atomically, so concurrent requests never see half a file."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)  # an unusable folder is an error at start, not per image

    def get(self, image: Path) -> Path | None:
        """The thumbnail of `image` (made now if not cached), None if it is not a readable image."""
        try:
            st = image.stat()
            key = hashlib.sha256(f"{image}\0{st.st_mtime_ns}\0{st.st_size}\0{THUMB_BOX}".encode()).hexdigest()
            out = self.folder / key[:2] / f"{key}.jpg"
            if out.is_file():
                return out
            with Image.open(image) as im:
                thumb = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):  # UnidentifiedImageError is an OSError
            return None
        thumb.thumbnail(THUMB_BOX)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        thumb.save(tmp, "JPEG", quality=85)
        os.replace(tmp, out)
        return out


def image_type(path: Path) -> str | None:
    """The MIME type of an image file PIL can read, None for any other file."""
    try:
        with Image.open(path) as im:
            return Image.MIME.get(im.format or "")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class QueryError(ValueError):
    """A malformed request (the page's own checks, before the server is asked); `status` its HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_k(value: str | None) -> int:
    if value is None or value == "":
        return 10
    try:
        k = int(value)
    except ValueError:
        raise QueryError(f"k must be a whole number, got {value!r}") from None
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def parse_filter(cameras: list[str], since: str | None, until: str | None) -> Filter:
    """The client's Filter; an empty field is no bound (a form sends empty fields)."""
    try:
        return Filter(tuple(c for c in cameras if c), since or None, until or None)
    except ValueError as e:  # a bad time or since > until: Filter says which
        raise QueryError(str(e)) from None


def parse_like(values: list[str]) -> list[int]:
    bad = [v for v in values if not INDEX.fullmatch(v)]
    if bad:
        raise QueryError(f"like must be a gallery index (a whole number, as a hit's index gives it), got {bad[0]!r}")
    return [int(v) for v in values]


async def unreachable(client: AsyncSearchClient) -> list[str]:
    """The urls whose server does not answer a liveness probe."""
    from tritonclient.utils import InferenceServerException
    down = []
    for url, c in zip(client.urls, client.clients):
        try:
            live = await c.is_server_live(client_timeout=LIVE_TIMEOUT_S)
        except InferenceServerException:
            live = False
        if not live:
            down.append(url)
    return down


async def read_image(request) -> bytes:
    """The request's body, refused (413) past MAX_IMAGE_BYTES before more of it is read."""
    too_large = QueryError(f"the image is over {MAX_IMAGE_BYTES >> 20} MB: the server searches images of at most "
                           f"{MAX_IMAGE_BYTES >> 20} MB", status=413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_IMAGE_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_IMAGE_BYTES:
            raise too_large
    if not body:
        raise QueryError("no image: POST the image file as the request's body")
    return bytes(body)


def create_app(urls: str | list[str], root: str | os.PathLike, cache: str | os.PathLike | None = None,
               timeout: float = 60.0, cameras: list[str] = (), auth: PageAuth | None = None,
               credentials: Credentials = NO_CREDENTIALS) -> Starlette:
    """The page and its API over the servers at `urls` (one per shard), images from `root`;
    `cameras`: the gallery's camera names, the page's choices (a filter may name others);
    `auth`: who may use it (None: anyone who reaches it); `credentials`: the page's own, on the server."""
    # here, not at the top: `tbps --help` and the other commands need no web framework
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    images = ImageRoot(root)
    thumbnails = Thumbnails(cache or default_cache())
    options = {"cameras": list(cameras), "max_image_bytes": MAX_IMAGE_BYTES}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # gRPC aio channels belong to the event loop that made them: the server's own
        app.state.client = AsyncSearchClient(urls, timeout=timeout, credentials=credentials)
        try:
            yield
        finally:
            await app.state.client.close()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def query_filter(params) -> tuple[int, Filter]:
        return parse_k(params.get("k")), parse_filter(params.getlist("camera"), params.get("since"),
                                                      params.get("until"))

    async def answer(request, labels: list[str], query) -> JSONResponse:
        """`await query(client)`'s hits as `tbps search --json` prints them, or the reason there are none."""
        client = request.app.state.client
        try:
            results = await query(client)
        except SearchError as e:
            down = await unreachable(client)
            if down:
                return error(503, f"the search server is not reachable at {', '.join(down)}: is it running "
                                  f"(tbps serve REPOSITORY)? ({e})")
            return error(400, f"the server refused the query: {e}")
        return JSONResponse([{"text": t, "exact": hits.exact, "hits": [asdict(h) for h in hits]}
                             for t, hits in zip(labels, results)])

    def guarded(handler, search: bool = False, page: bool = False):
        """The handler for a logged-in user (any user, without `auth`): a POST must carry the
        session's CSRF token; a search counts against the user's rate."""
        async def run(request):
            request.state.caller, request.state.session = None, None
            if auth is None:
                return await handler(request)
            session = auth.session(request.headers, request.cookies)
            if session is None:
                if page and auth.accounts is not None:
                    return RedirectResponse("/login", status_code=303)
                return error(401, "log in first (the search page needs a user)")
            if request.method == "POST" and not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""),
                                                                    session.csrf):
                return error(403, "this request lacks the page's CSRF token: reload the page")
            if search and not auth.allow_search(session):
                return error(429, f"too many searches: at most {auth.rate} a minute per user")
            request.state.session = session
            request.state.caller = {"user": session.user, "client": request.client.host if request.client else ""}
            return await handler(request)
        return run

    async def page(request):
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def page_options(request):
        session = request.state.session
        who = {"user": session.user, "role": session.role, "csrf": session.csrf} if session else {}
        return JSONResponse({**options, **who})

    async def login_page(request):
        return FileResponse(STATIC / "login.html", headers=PAGE_HEADERS)

    async def login(request):
        # no session yet, so no CSRF token: the form must come from this page's own origin
        if urllib.parse.urlsplit(request.headers.get("origin", "")).netloc != request.headers.get("host"):
            return error(403, "a login must come from the search page's own login form")
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        name, password = (form.get(field, [""])[0] for field in ("name", "password"))
        token = await run_in_threadpool(auth.login, name, password)  # scrypt: off the event loop
        if token is None:
            return RedirectResponse("/login?failed=1", status_code=303)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, max_age=IDLE_S, httponly=True, secure=True, samesite="strict")
        return response

    async def logout(request):
        auth.logout(request.cookies.get(COOKIE))
        response = JSONResponse({"logged_out": request.state.session.user})
        response.delete_cookie(COOKIE)
        return response

    async def search(request):
        params = request.query_params
        texts, likes = params.getlist("text"), params.getlist("like")
        try:
            if not texts and not likes:
                raise QueryError("no description: ask /api/search?text=...&k=10 (or like=INDEX)")
            if texts and likes:
                raise QueryError("search by text or by like, not both in one request")
            k, flt = query_filter(params)
            indices = parse_like(likes)
        except QueryError as e:
            return error(e.status, str(e))
        if texts:
            return await answer(request, texts, lambda client: client.search(texts, k, flt, request.state.caller))
        return await answer(request, [f"like #{i}" for i in indices],
                            lambda client: client.like(indices, k, flt, request.state.caller))

    async def search_image(request):
        try:
            k, flt = query_filter(request.query_params)
            body = await read_image(request)
        except QueryError as e:
            return error(e.status, str(e))
        return await answer(request, ["image"],
                            lambda client: client.search_images(body, k, flt, request.state.caller))

    async def thumb(request):
        path = images.find(request.path_params["path"])
        out = path and await run_in_threadpool(thumbnails.get, path)
        if out is None:
            return Response("not found", status_code=404)
        return FileResponse(out, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def image(request):
        path = images.find(request.path_params["path"])
        media = path and await run_in_threadpool(image_type, path)
        if not media:
            return Response("not found", status_code=404)
        return FileResponse(path, media_type=media, headers={"X-Content-Type-Options": "nosniff"})

    async def internal(request, exc):  # the last resort: a line, never a traceback, reaches the page
        return error(500, f"internal error of the search page ({type(exc).__name__})")

    routes = [Route("/", guarded(page, page=True)), Route("/api/options", guarded(page_options)),
              Route("/api/search", guarded(search, search=True)),
              Route("/api/search/image", guarded(search_image, search=True), methods=["POST"]),
              Route("/thumb/{path:path}", guarded(thumb)), Route("/image/{path:path}", guarded(image)),
              Mount("/static", StaticFiles(directory=STATIC))]
    if auth is not None and auth.accounts is not None:
        routes += [Route("/login", login_page), Route("/login", login, methods=["POST"]),
                   Route("/logout", guarded(logout), methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: internal})


def _server(app: Starlette):
    import uvicorn
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is one clear error before the page
    says where it is (and port 0 picks a free one with no race)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    return sock


def _base_url(host: str, sock: socket.socket) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"


def serve_ui(urls: str | list[str], root: str | os.PathLike, host: str = "127.0.0.1", port: int = 8080,
             cache: str | os.PathLike | None = None, cameras: list[str] = (), auth: PageAuth | None = None,
             credentials: Credentials = NO_CREDENTIALS) -> None:
    """Serve the page until Ctrl-C, which ends in KeyboardInterrupt after a clean shutdown
    (uvicorn re-raises the signal it caught)."""
    server = _server(create_app(urls, root, cache, cameras=cameras, auth=auth, credentials=credentials))
    with _listen(host, port) as sock:
        print(f"search page: {_base_url(host, sock)}/ (Ctrl-C stops)", flush=True)
        server.run(sockets=[sock])


@contextlib.contextmanager
def running_ui(urls: str | list[str], root: str | os.PathLike, cache: str | os.PathLike | None = None,
               host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0, cameras: list[str] = (),
               auth: PageAuth | None = None, credentials: Credentials = NO_CREDENTIALS):
    """The page served from a background thread (tests, benchmarks): yields its base URL."""
    server = _server(create_app(urls, root, cache, timeout, cameras, auth, credentials))
    with _listen(host, port) as sock:
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tbps-ui", daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise OSError(f"the search page did not start on {host}:{port}")
            time.sleep(0.02)
        try:
            yield _base_url(host, sock)
        finally:
            server.should_exit = True
            thread.join()


def gallery_images(gallery: str | os.PathLike) -> tuple[str, list[str]]:
    """A gallery file's image folder and camera names (its sets are not read)."""
    from export.gallery import load_gallery
    g = load_gallery(gallery, with_sets=False)
    if not g.root:
        raise ValueError(f"{gallery} records no image folder: give it with --root")
    return g.root, g.cameras


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from serving.live_commands import add_connection
    add_connection(parser)  # --url, and the page's own TLS and key on the server
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument("--gallery", help="the served gallery file: its images are under the folder it records, "
                                          "its cameras are the page's choices")
    images.add_argument("--root", help="the folder the gallery's image paths are relative to")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    parser.add_argument("--cache", default=None, help=f"thumbnail folder (default {default_cache()})")
    users = parser.add_mutually_exclusive_group()
    users.add_argument("--accounts", default=None, metavar="FILE",
                       help="users log in with the accounts of this file (tbps accounts add)")
    users.add_argument("--trust-user-header", default=None, metavar="HEADER",
                       help="the user named by an authenticating reverse proxy in this header (the page must "
                            "then be reachable only through it: listen on the loopback)")
    parser.add_argument("--trust-role-header", default=None, metavar="HEADER",
                        help="with --trust-user-header: the user's role (viewer, operator; default viewer)")
    parser.add_argument("--rate", type=int, default=120, help="searches a user may make a minute (with users)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a --host other than loopback without accounts, or with a trusted header")


def run(a: argparse.Namespace) -> None:
    from serving.access import is_loopback
    from serving.live_commands import credentials
    root, cameras = gallery_images(a.gallery) if a.gallery else (a.root, [])
    auth = PageAuth(a.accounts, a.trust_user_header, a.trust_role_header, a.rate) \
        if a.accounts or a.trust_user_header else None
    if not is_loopback(a.host) and not a.insecure and (auth is None or a.trust_user_header):
        why = ("trusting a header anyone who reaches it can send: listen on the loopback behind the proxy" if auth
               else "without a login (--accounts, or a proxy's --trust-user-header)")
        raise ValueError(f"refusing to serve the page on {a.host} {why}; --insecure to do it anyway")
    serve_ui(a.url or [DEFAULT_URL], root, host=a.host, port=a.port, cache=a.cache, cameras=cameras, auth=auth,
             credentials=credentials(a))
