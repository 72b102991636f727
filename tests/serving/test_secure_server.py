"""A secured server, for real: TLS handshakes with certificates made here by openssl, keys by role
checked by the server's models over gRPC and HTTP, Triton's admin protocols behind their key, and
the audit trail the server writes (verified after concurrent clients, and after a kill -9)."""
import asyncio
import json
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest

from serving import audit
from serving.access import GRPC_ADMIN_HEADER, add_key
from serving.client import AsyncSearchClient, Credentials, SearchClient, SearchError
from serving.launch import Security, ServerError, TritonServer

pytestmark = pytest.mark.slow


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def certificate(folder, name: str, ca: str | None, san: str | None = None) -> None:
    """name.key and name.pem: self-signed (a CA) or signed by `ca`."""
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
            *(["-x509", "-days", "2", "-out", f"{name}.pem"] if ca is None else ["-out", f"{name}.csr"]), cwd=folder)
    if ca is not None:
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "client_ca", "other_ca"):
        certificate(folder, ca, None)
    certificate(folder, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    certificate(folder, "client", "client_ca")
    return folder


@pytest.fixture(scope="module")
def secured(esa_export, gallery, pki, tmp_path_factory):
    from serving.repository import write_repository
    root = tmp_path_factory.mktemp("secured")
    repo = write_repository(esa_export, gallery, root / "repo", max_batch_size=8)
    keys = {name: add_key(root / "keys.json", name, role) for name, role in (("vera", "viewer"), ("otto", "operator"))}
    security = Security(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "client_ca.pem"),
                        str(root / "keys.json"), "the-admin-key", str(root / "audit"))
    server = TritonServer(repo, explicit=True, security=security).start()  # explicit: publish_gallery works
    yield server, keys, root / "audit"
    server.stop()


def credentials(pki, key=None, ca="ca", cert=True):
    return Credentials(str(pki / f"{ca}.pem"), str(pki / "client.pem") if cert else None,
                       str(pki / "client.key") if cert else None, key)


def test_only_a_client_that_trusts_the_server_and_is_trusted_connects(secured, pki, captions):
    server, keys, _ = secured
    with SearchClient(server.grpc_url, credentials=credentials(pki, keys["vera"])) as client:
        assert len(client.search(captions[0], k=3)[0]) == 3
    for refused in (Credentials(api_key=keys["vera"]),  # plain text to a TLS port
                    credentials(pki, keys["vera"], ca="other_ca"),  # a CA that did not sign the server
                    credentials(pki, keys["vera"], cert=False)):  # mutual TLS: no client certificate
        with SearchClient(server.grpc_url, timeout=10, credentials=refused) as client, pytest.raises(SearchError):
            client.search(captions[0], k=3)


def test_a_new_gallery_goes_live_only_with_the_admin_key(secured, pki, gallery):
    from serving.repository import publish_gallery
    server, _, folder = secured
    with pytest.raises(ValueError, match="did not load gallery version 2.*tbps-admin-key"):
        publish_gallery(server.repository, gallery, server.grpc_url, connection=credentials(pki).connection())
    assert publish_gallery(server.repository, gallery, server.grpc_url, admin_key="the-admin-key",
                           connection=credentials(pki).connection()) == 2  # the refused 2 was deleted
    loads = [r for r in audit.show(folder) if r["event"] == "load"]
    assert [r["version"] for r in loads] == [1, 2]  # the server recorded the publish


def test_each_role_may_do_its_operations_and_no_more(secured, pki, captions, synthetic_data):
    from trainer.data.formats import load_dataset
    server, keys, _ = secured
    image = load_dataset(synthetic_data).train[0].path
    with SearchClient(server.grpc_url, credentials=credentials(pki)) as anonymous:
        with pytest.raises(SearchError, match="permission denied: search needs a key"):
            anonymous.search(captions[0], k=3)
    with SearchClient(server.grpc_url, credentials=credentials(pki, "not-a-key")) as stranger:
        with pytest.raises(SearchError, match="that key is not valid on this server"):
            stranger.search(captions[0], k=3)
    with SearchClient(server.grpc_url, credentials=credentials(pki, keys["vera"])) as viewer:
        assert viewer.search_images(image.read_bytes(), k=2)[0]
        with pytest.raises(SearchError, match="ingest needs the operator role; key 'vera' is a viewer"):
            viewer.ingest([image.read_bytes()], ["new/by-vera.jpg"])
        with pytest.raises(SearchError, match="erasure needs the operator role"):
            viewer.delete(paths=["new/by-vera.jpg"])
        assert len(viewer.like([0], k=2)[0]) == 2  # still serving
    with SearchClient(server.grpc_url, credentials=credentials(pki, keys["otto"])) as operator:
        (done,) = operator.ingest([image.read_bytes()], ["new/by-otto.jpg"])
        assert done.index is not None and operator.delete(paths=["new/by-otto.jpg"]) == [done.index]
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
    admin = grpcclient.InferenceServerClient(server.grpc_url, **credentials(pki).connection())
    with pytest.raises(InferenceServerException, match="tbps-admin-key"):
        admin.get_model_repository_index()
    assert admin.get_model_repository_index(headers={GRPC_ADMIN_HEADER: "the-admin-key"}).models
    # HTTP (loopback only, no TLS of its own): the same keys
    body = json.dumps({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [captions[0]]},
                                  {"name": "TOPK", "shape": [1, 1], "datatype": "INT32", "data": [2]}]}).encode()
    url = f"http://127.0.0.1:{server.http_port}/v2/models/person_search/infer"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=30)
    assert "search needs a key" in json.load(refused.value)["error"]
    request = urllib.request.Request(url, data=body, method="POST", headers={"tbps-key": keys["vera"]})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert len(next(o for o in json.load(answer)["outputs"] if o["name"] == "INDICES")["data"]) == 2


def test_the_trail_holds_every_search_of_32_concurrent_clients_x_100_and_verifies(secured, pki, captions):
    server, keys, folder = secured
    before = audit.verify(folder).records

    async def load():
        async with AsyncSearchClient(server.grpc_url, credentials=credentials(pki, keys["vera"])) as client:
            async def one(c):
                for i in range(100):
                    await client.search(captions[(c + i) % len(captions)], k=5)
            await asyncio.gather(*(one(c) for c in range(32)))
    asyncio.run(load())
    v = audit.verify(folder)
    assert v.ok and v.records == before + 32 * 100, v.problems
    mine = [r for r in audit.show(folder, user="vera") if r["event"] == "search"]
    last = mine[-1]
    assert last["query"]["texts"][0] in captions and last["k"] == 5 and len(last["indices"][0]) == 5
    refusals = [r for r in audit.show(folder) if r["event"] == "refused"]
    assert {r["what"] for r in refusals} >= {"search", "ingest", "erasure"}
    assert any(r["event"] == "ingest" and r["who"] == "otto" and r["paths"] == ["new/by-otto.jpg"]
               for r in audit.show(folder))


@pytest.mark.parametrize("sync_ms", [None, 5], ids=["synced", "weaker-mode"])
def test_a_kill_9_under_load_leaves_a_trail_that_verifies(esa_export, gallery, pki, captions, tmp_path, sync_ms):
    """Every answered search is in the trail, in either mode (the weaker one's lines are in the
    page cache: a crash of the server loses none of them)."""
    from serving.repository import write_repository
    repo = write_repository(esa_export, gallery, tmp_path / "repo", max_batch_size=8)
    key = add_key(tmp_path / "keys.json", "vera", "viewer")
    security = Security(keys_file=str(tmp_path / "keys.json"), audit_dir=str(tmp_path / "audit"),
                        audit_sync_ms=sync_ms)
    server = TritonServer(repo, security=security).start()
    answered = []
    try:
        async def load():
            async with AsyncSearchClient(server.grpc_url, timeout=20, credentials=Credentials(api_key=key)) as client:
                async def one(c):
                    for i in range(1000):
                        await client.search(captions[i % len(captions)], k=3)
                        answered.append(c)
                tasks = [asyncio.create_task(one(c)) for c in range(16)]
                await asyncio.sleep(3)
                os.killpg(server.process.pid, signal.SIGKILL)  # the server and its model processes, mid-write
                await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run(load())
    finally:
        server.stop()
    v = audit.verify(tmp_path / "audit")
    assert v.records >= len(answered) > 16 and all("the last line is torn" in p for p in v.problems), v.problems
    with TritonServer(repo, security=security) as again, \
            SearchClient(again.grpc_url, credentials=Credentials(api_key=key)) as client:
        client.search(captions[0], k=3)
    after = audit.verify(tmp_path / "audit")
    assert after.ok and after.records > v.records and len(after.torn) == len(v.problems), after.problems
    from tests.conftest import run_command  # offline, the server stopped: the compaction joins the trail
    assert "compacted into gallery version 2" in run_command("serving.cli", "compact", repo, "--audit",
                                                             tmp_path / "audit").stdout
    last = list(audit.show(tmp_path / "audit"))[-1]
    assert audit.verify(tmp_path / "audit").ok and (last["event"], last["version"]) == ("compact", 2)


def test_a_public_address_needs_tls_and_keys(repository):
    with pytest.raises(ServerError, match=r"refusing to listen on 0\.0\.0\.0 without TLS .* and keys"):
        TritonServer(repository, host="0.0.0.0")
    with pytest.raises(ServerError, match="needs both a certificate and its private key"):
        TritonServer(repository, security=Security(tls_cert="server.pem"))


@pytest.fixture(scope="module")
def login_page(secured, pki, gallery, tmp_path_factory):
    """The search page with accounts, over the secured server with the page's own viewer key."""
    from serving.ui import gallery_images, running_ui
    from serving.ui_auth import PageAuth, add_account
    server, keys, _ = secured
    root = tmp_path_factory.mktemp("page")
    for name in ("alice", "bob"):
        add_account(root / "users.json", name, "viewer", f"{name} likes long passwords")
    auth = PageAuth(accounts=root / "users.json", rate=5)
    images, cameras = gallery_images(gallery)
    with running_ui(server.grpc_url, images, root / "cache", cameras=cameras, auth=auth,
                    credentials=credentials(pki, keys["vera"])) as url:
        yield url


def http(base: str, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    import http.client
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def log_in(base: str, name: str) -> str:
    """The session cookie of a login by form POST, from the page's own origin."""
    form = urllib.parse.urlencode({"name": name, "password": f"{name} likes long passwords"}).encode()
    status, headers, _ = http(base, "POST", "/login", form, {"Origin": base,
                                                             "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303 and headers["location"] == "/"
    return headers["set-cookie"].split(";")[0]


def test_the_page_logs_people_in_and_the_server_audits_who_searched(login_page, secured, captions):
    from serving.report import find_chromium
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    _, _, folder = secured
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page()
            page.goto(login_page)
            assert page.url == f"{login_page}/login"  # no session: the login form
            page.fill("#name", "alice")
            page.fill("#password", "not her password at all")
            page.click("button[type=submit]")
            page.wait_for_url("**/login?failed=1")
            assert page.is_visible("#error")
            page.fill("#name", "alice")
            page.fill("#password", "alice likes long passwords")
            page.click("button[type=submit]")
            page.wait_for_url(f"{login_page}/")
            page.wait_for_selector("body[data-ready]", state="attached")
            assert page.text_content("#user").startswith("alice (viewer)")
            (cookie,) = page.context.cookies()
            assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
            page.fill("#q", captions[0])
            page.fill("#k", "3")
            page.press("#q", "Enter")
            page.wait_for_selector('body[data-searches="1"]', state="attached")
            assert len(page.query_selector_all("#grid figure")) == 3 and not page.is_visible("#error")
            record = [r for r in audit.show(folder, user="alice") if r["event"] == "search"][-1]
            assert (record["who"], record["client"], record["query"]["texts"]) == ("vera", "127.0.0.1", [captions[0]])
            page.click("#logout")
            page.wait_for_url("**/login")
            assert http(login_page, "GET", "/api/options", headers={"Cookie": f"tbps_session={cookie['value']}"})[0] \
                == 401
        finally:
            browser.close()


def test_the_page_refuses_strangers_forged_posts_and_too_many_searches(login_page, captions):
    assert http(login_page, "GET", "/")[0] == 303  # to /login
    for path in ("/api/options", f"/api/search?text={urllib.parse.quote(captions[0])}", "/thumb/x.jpg"):
        assert http(login_page, "GET", path)[0] == 401
    form = b"name=bob&password=bob+likes+long+passwords"
    assert http(login_page, "POST", "/login", form, {"Origin": "http://evil.example"})[0] == 403
    cookie = log_in(login_page, "bob")
    status, _, body = http(login_page, "POST", "/api/search/image?k=3", b"\xff\xd8", {"Cookie": cookie})
    assert status == 403 and b"CSRF" in body
    csrf = json.loads(http(login_page, "GET", "/api/options", headers={"Cookie": cookie})[2])["csrf"]
    search = f"/api/search?k=2&text={urllib.parse.quote(captions[0])}"
    answers = [http(login_page, "GET", search, headers={"Cookie": cookie})[0] for _ in range(5)]
    second = log_in(login_page, "bob")  # a new session does not reset the user's rate
    status, _, body = http(login_page, "GET", search, headers={"Cookie": second})
    assert answers == [200] * 5 and status == 429 and b"at most 5 a minute" in body
    assert http(login_page, "POST", "/logout", headers={"Cookie": cookie, "X-CSRF-Token": csrf})[0] == 200
    assert http(login_page, "GET", "/api/options", headers={"Cookie": cookie})[0] == 401


def test_behind_a_proxy_the_page_trusts_its_user_header(secured, pki, gallery, tmp_path, captions):
    from serving.ui import gallery_images, running_ui
    from serving.ui_auth import PageAuth
    server, keys, folder = secured
    images, cameras = gallery_images(gallery)
    auth = PageAuth(user_header="X-Forwarded-User", role_header="X-Forwarded-Role")
    with running_ui(server.grpc_url, images, tmp_path, cameras=cameras, auth=auth,
                    credentials=credentials(pki, keys["vera"])) as url:
        search = f"/api/search?k=2&text={urllib.parse.quote(captions[1])}"
        assert http(url, "GET", search)[0] == 401
        status, _, body = http(url, "GET", "/api/options", headers={"X-Forwarded-User": "carol",
                                                                     "X-Forwarded-Role": "operator"})
        assert status == 200 and (json.loads(body)["user"], json.loads(body)["role"]) == ("carol", "operator")
        assert http(url, "GET", search, headers={"X-Forwarded-User": "carol"})[0] == 200
    assert [r for r in audit.show(folder, user="carol")][-1]["query"]["texts"] == [captions[1]]
