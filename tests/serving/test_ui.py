"""The search page (serving/ui.py) in Debian's headless Chromium, driven by Playwright over the
DevTools protocol (its own browser builds are never downloaded), against the real local Triton
server on the test gallery with cameras and times: the grid in the order of `tbps search
--json`, the query and its filters in the URL, search by a clicked crop and by a dropped or
chosen image file, the JSON API, images only from the gallery's root, and messages instead of
tracebacks.

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
from dataclasses import asdict

import pytest

from serving.report import find_chromium
from tests.serving.conftest import MAX_BATCH

pytestmark = pytest.mark.slow

K = 6  # below the 8 images of the test gallery: the grid holds exactly k
CAMERAS = ["north", "south", "gate"]
HOUR = 3_600_000


@pytest.fixture(scope="module")
def meta_gallery(gallery, tmp_path_factory):
    """The test gallery with image i seen by camera i % 3 at 12:00 + i hours; the last image's
    camera and time unknown (a filter on either never returns it)."""
    import torch

    from export.gallery import load_gallery, save_gallery
    from export.gallery_meta import NO_TIME, parse_time
    g = load_gallery(gallery)
    camera = torch.arange(len(g), dtype=torch.int32) % len(CAMERAS)
    time = torch.arange(len(g), dtype=torch.int64) * HOUR + parse_time("2026-11-30T12:00:00Z")
    camera[-1], time[-1] = -1, NO_TIME
    return save_gallery(tmp_path_factory.mktemp("ui-gallery") / "meta.safetensors", g.sets, g.ids, g.paths,
                        g.fingerprint, g.alpha, g.weight, g.margin, g.root, CAMERAS, camera, time)


@pytest.fixture(scope="module")
def server(esa_export, meta_gallery, tmp_path_factory):
    """This module's server (it replaces the session's): the gallery with cameras and times."""
    from serving.launch import TritonServer
    from serving.repository import write_repository
    repo = write_repository(esa_export, meta_gallery, tmp_path_factory.mktemp("ui-repo") / "repo",
                            max_batch_size=MAX_BATCH)
    with TritonServer(repo) as running:
        yield running


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
    with running_ui(server.grpc_url, ui_root, cache=cache, cameras=CAMERAS) as url:
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


def post_json(base: str, path: str, body: bytes) -> tuple[int, object]:
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        assert response.getheader("content-type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def wait_for_search(page, action=None) -> None:
    """Run `action` (typing, a click) and wait for the search it starts to be drawn; with no
    action, for the search a page just loaded runs from its URL (its first)."""
    # a selector, not wait_for_function: the page's Content-Security-Policy forbids eval
    done = 1 if action is None else int(page.get_attribute("body", "data-searches") or 0) + 1
    if action is not None:
        action()
    page.wait_for_selector(f'body[data-searches="{done}"]', state="attached")


def open_page(page, url: str) -> None:
    """Load the page and wait until it has read its URL (after /api/options answers): typing
    earlier would race the URL's k being written into the form."""
    page.goto(url)
    page.wait_for_selector("body[data-ready]", state="attached")


def type_and_enter(page, text: str, k: int) -> None:
    def act():
        page.fill("#q", text)
        page.fill("#k", str(k))
        page.press("#q", "Enter")
    wait_for_search(page, act)


def grid(page) -> list[list]:
    return page.eval_on_selector_all("#grid figure", """figures => figures.map(f => [f.dataset.path,
        f.querySelector('figcaption').textContent, f.querySelector('img').naturalWidth])""")


def shown_paths(page) -> list[str]:
    return [path for path, _, _ in grid(page)]


def url_query(page) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)


def drop_file(page, data: bytes, name: str) -> None:
    """Drop a file on the page as a user dragging it from their desktop does (a DataTransfer
    holding it, the drop event the browser fires)."""
    files = page.evaluate_handle("""([bytes, name]) => { const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"})); return dt; }""", [list(data), name])
    page.dispatch_event("main", "drop", {"dataTransfer": files})


def test_enter_draws_the_top_k_in_the_order_of_tbps_search(ui, page, server, captions):
    from serving.client import SearchClient
    text = captions[0]
    with SearchClient(server.grpc_url) as client:
        expected = client.search(text, K)[0]
    open_page(page, ui)
    type_and_enter(page, text, K)
    shown = grid(page)
    assert len(shown) == K and [path for path, _, _ in shown] == [h.path for h in expected]
    times = page.eval_on_selector_all("#grid figure", "fs => fs.map(f => f.querySelector('time')?.dateTime || '')")
    for (_, caption, width), h, time in zip(shown, expected, times):
        assert caption.startswith(f"#{h.rank} {h.score:.4f}") and f"person {h.person_id}" in caption
        assert (h.camera or "camera unknown") in caption and (h.time[:10] or "time unknown") in caption
        assert time == h.time
        assert width > 0, "a thumbnail did not load"
    assert any(h.camera for h in expected), "the test gallery's cameras are not served"
    assert not page.is_visible("#error")
    assert urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query) == {"q": [text], "k": [str(K)]}
    if os.environ.get("TBPS_UI_SCREENSHOT"):
        page.screenshot(path=os.environ["TBPS_UI_SCREENSHOT"])
    page.reload()  # the URL alone brings the same search back
    wait_for_search(page)
    assert page.input_value("#q") == text and grid(page) == shown


def test_an_example_description_searches_when_clicked(ui, page):
    open_page(page, ui)
    example = page.locator(".example").first
    text = example.text_content()
    wait_for_search(page, example.click)
    assert page.input_value("#q") == text and len(grid(page)) > 0
    assert urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["q"] == [text]


def test_api_answers_what_tbps_search_json_prints(ui, server, captions):
    texts = captions[1:3]
    window = {"since": "2026-11-30T13:00:00Z", "until": "2026-11-30T19:30:00+00:00"}
    cli = subprocess.run([sys.executable, "-m", "serving.cli", "search", *texts, "-k", "5", "--camera", "north",
                          "--camera", "gate", *(f"--{n}={v}" for n, v in window.items()), "--url", server.grpc_url,
                          "--json"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    query = urllib.parse.urlencode([("text", t) for t in texts] + [("k", 5), ("camera", "north"), ("camera", "gate"),
                                                                    *window.items()])
    status, body = get_json(ui, f"/api/search?{query}")
    assert status == 200 and body == json.loads(cli.stdout)
    # the gallery's north and gate images taken 13:00 to 19:30: 2 (14:00), 3, 5 and 6 (18:00)
    assert [sorted(h["index"] for h in result["hits"]) for result in body] == [[2, 3, 5, 6]] * 2


def test_api_searches_by_item_and_by_image_as_the_client_does(ui, server, ui_root, meta_gallery):
    from export.gallery import load_gallery
    from serving.client import Filter, SearchClient
    paths = load_gallery(meta_gallery, with_sets=False).paths
    image = (ui_root / paths[3]).read_bytes()
    flt = Filter(("north", "south"), since="2026-11-30T12:30:00Z")
    with SearchClient(server.grpc_url) as client:
        like, by_image = client.like(3, K, flt)[0], client.search_images(image, K, flt)[0]
    query = f"k={K}&camera=north&camera=south&since=2026-11-30T12:30:00Z"
    status, body = get_json(ui, f"/api/search?like=3&{query}")
    assert status == 200 and body == [{"text": "like #3", "exact": True, "hits": [asdict(h) for h in like]}]
    status, body = post_json(ui, f"/api/search/image?{query}", image)
    assert status == 200 and body == [{"text": "image", "exact": True, "hits": [asdict(h) for h in by_image]}]
    assert like[0].path == by_image[0].path == paths[3] and {h.camera for h in like} <= {"north", "south"}


def test_a_camera_filter_shows_only_that_cameras_tiles_and_lives_in_the_url(ui, page, captions):
    open_page(page, f"{ui}/?" + urllib.parse.urlencode({"q": captions[0], "k": K}))
    wait_for_search(page)
    assert page.eval_on_selector_all("#cameras input", "boxes => boxes.map(b => b.value)") == CAMERAS
    wait_for_search(page, lambda: page.check("#cameras input[value=gate]"))
    tiles = grid(page)
    assert page.eval_on_selector_all("#grid .camera", "cs => cs.map(c => c.textContent)") == ["gate"] * 2
    assert url_query(page) == {"q": [captions[0]], "k": [str(K)], "camera": ["gate"]}
    page.reload()  # the filter comes back with the URL
    wait_for_search(page)
    assert page.is_checked("#cameras input[value=gate]") and grid(page) == tiles


def test_a_time_window_keeps_the_images_taken_within_it(ui, page, captions):
    open_page(page, f"{ui}/?" + urllib.parse.urlencode({"q": captions[0], "k": K}))
    wait_for_search(page)

    def window(since, until):
        page.fill("#since", since)
        page.fill("#until", until)
        page.press("#until", "Enter")
    wait_for_search(page, lambda: window("2026-11-30T14:00:00Z", "2026-11-30T16:00:00Z"))
    times = page.eval_on_selector_all("#grid time", "ts => ts.map(t => t.dateTime)")
    assert sorted(times) == ["2026-11-30T14:00:00.000Z", "2026-11-30T15:00:00.000Z", "2026-11-30T16:00:00.000Z"]
    assert url_query(page)["since"] == ["2026-11-30T14:00:00Z"]
    wait_for_search(page, lambda: window("2026-11-30T16:00:00Z", "2026-11-30T14:00:00Z"))
    assert "is after" in page.text_content("#error") and grid(page) == []
    wait_for_search(page, lambda: window("yesterday", ""))
    assert "bad time 'yesterday'" in page.text_content("#error")


def test_a_click_on_a_crop_searches_for_more_like_that_person(ui, page, server, captions):
    from serving.client import SearchClient
    open_page(page, f"{ui}/?" + urllib.parse.urlencode({"q": captions[1], "k": K}))
    wait_for_search(page)
    path, index = page.eval_on_selector("#grid figure:nth-child(3)", "f => [f.dataset.path, f.dataset.index]")
    wait_for_search(page, lambda: page.click("#grid figure:nth-child(3) .crop"))
    with SearchClient(server.grpc_url) as client:
        expected = client.like(int(index), K)[0]
    assert shown_paths(page) == [h.path for h in expected] and expected[0].path == path
    assert url_query(page) == {"like": [index], "k": [str(K)]} and "more like gallery item" in page.text_content("#status")
    wait_for_search(page, page.go_back)  # the text search again, from the URL it had
    assert page.input_value("#q") == captions[1] and shown_paths(page)[2] == path


def test_a_dropped_or_chosen_image_file_searches_by_that_image(ui, page, ui_root, meta_gallery, tmp_path):
    from export.gallery import load_gallery
    paths = load_gallery(meta_gallery, with_sets=False).paths
    open_page(page, f"{ui}/?k={K}")
    wait_for_search(page, lambda: drop_file(page, (ui_root / paths[2]).read_bytes(), "dropped.jpg"))
    assert shown_paths(page)[0] == paths[2] and "more like dropped.jpg" in page.text_content("#status")
    assert url_query(page) == {"k": [str(K)]}  # no URL holds the file
    wait_for_search(page, lambda: page.check("#cameras input[value=north]"))  # a filter runs it again
    north = [p for i, p in enumerate(paths) if i % 3 == 0 and i < len(paths) - 1]
    assert sorted(shown_paths(page)) == sorted(north)
    wait_for_search(page, lambda: page.set_input_files("#image", str(ui_root / paths[3])))
    assert shown_paths(page)[0] == paths[3]
    (tmp_path / "notes.jpg").write_text("not an image at all")
    wait_for_search(page, lambda: page.set_input_files("#image", str(tmp_path / "notes.jpg")))
    message = page.text_content("#error")
    assert message.startswith("the server refused the query:") and "Traceback" not in message and grid(page) == []


def test_a_refused_query_shows_the_servers_message(ui, page):
    open_page(page, ui)
    type_and_enter(page, "   ", 3)
    assert "text 0 is empty" in page.text_content("#error") and grid(page) == []
    status, body = get_json(ui, "/api/search?text=&k=3")
    assert status == 400 and "text 0 is empty" in body["error"]
    for query, message in (("text=a+man&k=0", "k must be between"), ("text=a+man&k=ten", "k must be a whole"),
                           ("k=3", "no description"), ("text=a+man&like=1", "not both"),
                           ("like=-1", "like must be a gallery index"), ("like=1e3", "like must be a gallery index"),
                           ("like=999", "LIKE 999: no such item"), ("text=a+man&since=noon", "bad time 'noon'"),
                           ("text=a+man&camera=north&camera=attic", "unknown camera(s) ['attic']; the gallery's "
                                                                    "cameras: north, south, gate")):
        status, body = get_json(ui, f"/api/search?{query}")
        assert status == 400 and message in body["error"], body


def test_an_image_upload_is_refused_past_16_mb_and_when_empty(ui):
    from serving.ui import MAX_IMAGE_BYTES
    for body, status, message in ((b"", 400, "no image"), (bytes(MAX_IMAGE_BYTES + 1), 413, "over 16 MB")):
        got, answer = post_json(ui, "/api/search/image?k=3", body)
        assert got == status and message in answer["error"], answer
    assert get(ui, "/api/search/image")[0] == 405


def test_more_like_an_item_across_shards_says_to_search_by_its_image(server, ui_root, cache):
    from serving.ui import running_ui
    with running_ui([server.grpc_url, server.grpc_url], ui_root, cache=cache) as shards:
        status, body = get_json(shards, "/api/search?like=1&k=3")
    assert status == 400 and "served by one server" in body["error"], body


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
    open_page(page, f"{down_ui}/?q=a+woman+in+a+red+dress&k=3")
    wait_for_search(page)
    message = page.text_content("#error")
    assert "not reachable" in message and "Traceback" not in message and grid(page) == []
    status, body = get_json(down_ui, "/api/search?text=a+man&k=3")
    assert status == 503 and list(body) == ["error"] and "not reachable" in body["error"]
    status, body = post_json(down_ui, "/api/search/image?k=3", b"an image")
    assert status == 503 and "not reachable" in body["error"]


def test_the_command_serves_a_gallerys_images_and_cameras_until_interrupted(server, meta_gallery, tmp_path):
    from serving.launch import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "ui", "--gallery", str(meta_gallery),
                             "--url", server.grpc_url, "--port", str(port), "--cache", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == f"search page: http://127.0.0.1:{port}/ (Ctrl-C stops)"
        base = f"http://127.0.0.1:{port}"  # listening already: the line comes after the bind
        status, _, body = get(base, "/")
        assert status == 200 and b'id="q"' in body
        assert get_json(base, "/api/options")[1]["cameras"] == CAMERAS  # the gallery file's: the page's choices
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
