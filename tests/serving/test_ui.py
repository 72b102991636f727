"""The search page (serving/ui.py) in Debian's headless Chromium, driven by Playwright over the
DevTools protocol (its own browser builds are never downloaded), against the real local Triton
server of conftest.py: the grid in the order of `tbps search --json`, the query in the URL, the
JSON API, images only from the gallery's root, and messages instead of tracebacks.

TBPS_UI_SCREENSHOT=benchmarks/results/ui_example.png also writes the page's screenshot.
"""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse

import pytest

from serving.report import find_chromium

pytestmark = pytest.mark.slow

K = 6  # below the 8 images of the test gallery: the grid holds exactly k


@pytest.fixture(scope="module")
def ui_root(gallery, tmp_path_factory):
    """A copy of the gallery's images, with a symlink that stays inside and one that escapes to a
    real image outside the root (so only containment can refuse it), and a file that is no image."""
    from export.gallery import load_gallery
    g = load_gallery(gallery)
    root = tmp_path_factory.mktemp("ui") / "images"
    for path in g.paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(g.root, path), root / path)
    shutil.copy2(root / g.paths[0], root.parent / "secret.jpg")
    (root / "escape.jpg").symlink_to(root.parent / "secret.jpg")
    (root / "inside.jpg").symlink_to(root / g.paths[1])
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("thumbs")


@pytest.fixture(scope="module")
def ui(server, ui_root, cache):
    from serving.ui import running_ui
    with running_ui(server.grpc_url, ui_root, cache=cache) as url:
        yield url


@pytest.fixture(scope="module")
def down_ui(ui_root, tmp_path_factory):
    """A page whose search server is not there: a port nothing listens on."""
    from serving.launch import free_port
    from serving.ui import running_ui
    with running_ui(f"127.0.0.1:{free_port()}", ui_root, cache=tmp_path_factory.mktemp("thumbs-down")) as url:
        yield url


@pytest.fixture(scope="module")
def page():
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        yield browser.new_page(viewport={"width": 1000, "height": 620})
        browser.close()


def get(base: str, path: str) -> tuple[int, str, bytes]:
    """A raw GET: `path` is sent exactly as written (no client-side `..` normalisation)."""
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        conn.close()


def get_json(base: str, path: str) -> tuple[int, object]:
    status, kind, body = get(base, path)
    assert kind == "application/json"
    return status, json.loads(body)


def wait_for_search(page, action=None) -> None:
    """Run `action` (typing, a click) and wait for the search it starts to be drawn; with no
    action, for the search a page just loaded runs from its URL (its first)."""
    # a selector, not wait_for_function: the page's Content-Security-Policy forbids eval
    done = 1 if action is None else int(page.get_attribute("body", "data-searches") or 0) + 1
    if action is not None:
        action()
    page.wait_for_selector(f'body[data-searches="{done}"]', state="attached")


def type_and_enter(page, text: str, k: int) -> None:
    def act():
        page.fill("#q", text)
        page.fill("#k", str(k))
        page.press("#q", "Enter")
    wait_for_search(page, act)


def grid(page) -> list[list]:
    return page.eval_on_selector_all("#grid figure", """figures => figures.map(f => [f.dataset.path,
        f.querySelector('figcaption').textContent, f.querySelector('img').naturalWidth])""")


def test_enter_draws_the_top_k_in_the_order_of_tbps_search(ui, page, server, captions):
    from serving.client import SearchClient
    text = captions[0]
    with SearchClient(server.grpc_url) as client:
        expected = client.search(text, K)[0]
    page.goto(ui)
    type_and_enter(page, text, K)
    shown = grid(page)
    assert len(shown) == K and [path for path, _, _ in shown] == [h.path for h in expected]
    for (_, caption, width), h in zip(shown, expected):
        assert caption.startswith(f"#{h.rank} {h.score:.4f}") and f"person {h.person_id}" in caption
        assert width > 0, "a thumbnail did not load"
    assert not page.is_visible("#error")
    assert urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query) == {"q": [text], "k": [str(K)]}
    if os.environ.get("TBPS_UI_SCREENSHOT"):
        page.screenshot(path=os.environ["TBPS_UI_SCREENSHOT"])
    page.reload()  # the URL alone brings the same search back
    wait_for_search(page)
    assert page.input_value("#q") == text and grid(page) == shown


def test_an_example_description_searches_when_clicked(ui, page):
    page.goto(ui)
    example = page.locator(".example").first
    text = example.text_content()
    wait_for_search(page, example.click)
    assert page.input_value("#q") == text and len(grid(page)) > 0
    assert urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["q"] == [text]


def test_api_answers_what_tbps_search_json_prints(ui, server, captions):
    texts = captions[1:3]
    cli = subprocess.run([sys.executable, "-m", "serving.cli", "search", *texts, "-k", "5", "--url",
                          server.grpc_url, "--json"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    status, body = get_json(ui, "/api/search?" + urllib.parse.urlencode([("text", t) for t in texts] + [("k", 5)]))
    assert status == 200 and body == json.loads(cli.stdout)


def test_a_refused_query_shows_the_servers_message(ui, page):
    page.goto(ui)
    type_and_enter(page, "   ", 3)
    assert "text 0 is empty" in page.text_content("#error") and grid(page) == []
    status, body = get_json(ui, "/api/search?text=&k=3")
    assert status == 400 and "text 0 is empty" in body["error"]
    for query, message in (("text=a+man&k=0", "k must be between"), ("text=a+man&k=ten", "k must be a whole"),
                           ("k=3", "no description")):
        status, body = get_json(ui, f"/api/search?{query}")
        assert status == 400 and message in body["error"], body


def test_images_come_only_from_the_gallery_root(ui, ui_root, gallery):
    from export.gallery import load_gallery
    first = load_gallery(gallery).paths[0]
    secret = (ui_root.parent / "secret.jpg").resolve()
    refused = ["../secret.jpg", "%2e%2e/secret.jpg", "%2E%2E%2Fsecret.jpg", f"{first}/../../../secret.jpg",
               urllib.parse.quote(str(secret)), "%2F" + urllib.parse.quote(str(secret)[1:]), "escape.jpg",
               "notes.txt", "no/such.jpg", "", "%00.jpg"]
    for route in ("thumb", "image"):
        for path in (first, "inside.jpg"):
            status, kind, _ = get(ui, f"/{route}/{path}")
            assert status == 200 and kind.startswith("image/"), (route, path, status)
        for path in refused:
            status, _, body = get(ui, f"/{route}/{path}")
            assert status == 404 and secret.read_bytes() not in body, (route, path, status)


def test_a_thumbnail_is_made_once_and_remade_when_the_image_changes(ui, ui_root, cache):
    from PIL import Image

    from serving.ui import THUMB_BOX
    image = ui_root / "inside.jpg"

    def thumbnails():
        get(ui, "/thumb/inside.jpg")
        return {p: p.stat().st_mtime_ns for p in cache.rglob("*.jpg")}
    made = thumbnails()
    assert thumbnails() == made
    with Image.open(max(made, key=made.get)) as thumb:
        assert thumb.format == "JPEG" and thumb.width <= THUMB_BOX[0] and thumb.height <= THUMB_BOX[1]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert len(thumbnails()) == len(made) + 1


def test_server_down_shows_a_message_not_a_traceback(down_ui, page):
    page.goto(f"{down_ui}/?q=a+woman+in+a+red+dress&k=3")
    wait_for_search(page)
    message = page.text_content("#error")
    assert "not reachable" in message and "Traceback" not in message and grid(page) == []
    status, body = get_json(down_ui, "/api/search?text=a+man&k=3")
    assert status == 503 and list(body) == ["error"] and "not reachable" in body["error"]


def test_the_command_serves_a_gallerys_images_until_interrupted(server, gallery, tmp_path):
    from serving.launch import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "ui", "--gallery", str(gallery),
                             "--url", server.grpc_url, "--port", str(port), "--cache", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == f"search page: http://127.0.0.1:{port}/ (Ctrl-C stops)"
        base = f"http://127.0.0.1:{port}"  # listening already: the line comes after the bind
        status, _, body = get(base, "/")
        assert status == 200 and b'id="q"' in body
        status, hits = get_json(base, "/api/search?text=a+man+in+a+black+jacket&k=2")
        assert status == 200 and len(hits[0]["hits"]) == 2
        assert get(base, f"/thumb/{hits[0]['hits'][0]['path']}")[0] == 200
        busy = subprocess.run([sys.executable, "-m", "serving.cli", "ui", "--root", str(tmp_path), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
        assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr, busy.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err
    bad = subprocess.run([sys.executable, "-m", "serving.cli", "ui", "--root", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "image folder not found" in bad.stderr and "Traceback" not in bad.stderr
