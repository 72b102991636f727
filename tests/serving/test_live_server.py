"""The live gallery through a real local server: ingest (found by its description, by its image
and by itself), per-image refusals, filters against a reference computed here, erasure, a
kill -9 during a long ingest, and compaction ranking as the live gallery did (up to float noise)."""
import io
import json
import os
import random
import re
import signal
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import kernels
from export.gallery import load_gallery, save_gallery
from export.gallery_meta import NO_TIME, parse_time
from export.ort_encoders import OnnxEncoders
from tritonclient.utils import InferenceServerException

from serving.client import Filter, SearchClient, SearchError
from serving.launch import TritonServer
from serving.repository import compact_repository, gallery_versions, write_repository
from tests.conftest import run_command
from tests.serving.conftest import MAX_BATCH
from trainer.data.formats import load_dataset
from trainer.data.pixels import Preprocess
from trainer.data.tokenizer import Tokenizer
from trainer.data.transforms import load_image

pytestmark = pytest.mark.slow
CAMERAS = ["north", "south", "gate"]
HOUR = 3_600_000
MAX_IMAGE_BYTES = 16 << 20  # serving/models/images.py's (a module of the server's processes)


@pytest.fixture(scope="module")
def base(gallery, tmp_path_factory):
    """The test gallery with a camera and a time for every image (and some unknown)."""
    g = load_gallery(gallery)
    rng = np.random.default_rng(5)
    camera = torch.from_numpy(rng.integers(-1, len(CAMERAS), len(g)).astype(np.int32))
    time = torch.from_numpy(rng.integers(0, 24, len(g)) * HOUR + parse_time("2026-12-01T00:00:00Z"))
    time[::7] = NO_TIME
    return save_gallery(tmp_path_factory.mktemp("live-base") / "base.safetensors", g.sets, g.ids, g.paths,
                        g.fingerprint, g.alpha, g.weight, g.margin, g.root, CAMERAS, camera, time)


@pytest.fixture(scope="module")
def train_images(synthetic_data):
    """Images the gallery does not hold (the training split's), with a caption each."""
    return [(e.path, e.pid, e.captions[0]) for e in load_dataset(synthetic_data).train][:40]


class Live:
    """A repository over `base`, its server (restartable), and what this test added and erased,
    from which `reference` computes what the server must answer."""

    def __init__(self, esa_export, base, folder):
        self.export = esa_export
        self.repo = write_repository(esa_export, base, folder / "repo", max_batch_size=MAX_BATCH)
        self.encoders = OnnxEncoders(esa_export)
        self.tokenizer = Tokenizer(esa_export / self.encoders.manifest["tokenizer"]["file"])
        self.preprocess = Preprocess.from_record(self.encoders.manifest["image"])
        g = load_gallery(base)
        self.sets, self.margin = g.sets.float(), g.margin
        self.paths, self.camera, self.time = list(g.paths), g.camera.tolist(), g.time.tolist()
        self.alpha, self.weight, self.erased = g.alpha, g.weight, set()
        self.server = TritonServer(self.repo).start()

    def restart(self, kill: bool = False):
        if kill:  # the server and its model processes, at once: a crash
            os.killpg(self.server.process.pid, signal.SIGKILL)
            self.server.process.wait()
        self.server.stop()
        self.server = TritonServer(self.repo).start()

    def client(self):
        return SearchClient(self.server.grpc_url)

    def image_sets(self, files) -> torch.Tensor:
        pixels = np.stack([self.preprocess(load_image(f)) for f in files])
        return torch.from_numpy(self.encoders.encode_image(pixels)).half().float()  # stored as float16

    def added(self, files, paths, cameras, times):
        self.sets = torch.cat([self.sets, self.image_sets(files)])
        self.margin = torch.cat([self.margin, torch.zeros(len(files))])
        self.paths += paths
        self.camera += [CAMERAS.index(c) if c in CAMERAS else -1 for c in cameras]
        self.time += [parse_time(t) if t else NO_TIME for t in times]

    def reference(self, texts, cameras=(), since=None, until=None):
        """(score, path) of every item the filter keeps, per text, as kernels.search ranks them
        here with the mask built here."""
        camera, time = np.array(self.camera), np.array(self.time)
        keep = np.array([i not in self.erased for i in range(len(self.paths))])
        if cameras:
            keep &= np.isin(camera, [CAMERAS.index(c) for c in cameras])
        if since is not None or until is not None:
            keep &= time != NO_TIME
        if since is not None:
            keep &= time >= parse_time(since)
        if until is not None:
            keep &= time <= parse_time(until)
        queries = torch.from_numpy(self.encoders.encode_text(self.tokenizer(texts)))
        scores, index = kernels.search(queries, self.sets, len(self.paths), alpha=self.alpha, weight=self.weight,
                                       margin=self.margin, allowed=torch.from_numpy(keep))
        return [[(float(s), self.paths[i]) for s, i in zip(*row)] for row in zip(scores, index.tolist())]


def served(hits):
    return [[(h.score, h.path) for h in row] for row in hits]


ATOL = 1e-4  # the server encodes an ingested image in a batch of its own, the reference in another


def assert_ranked(got, full, k, context=None):
    """Each row of `got` is a top-k of the complete ranking `full` ((score, path) lists), up to
    ATOL (an image encoded in another batch may round to other fp16 sets): k' = min(k, kept)
    distinct items with their scores, in an order that never inverts two by more than ATOL,
    and no item left out that beats one returned by more than ATOL."""
    assert len(got) == len(full), context
    for row, ranking in zip(got, full):
        score = dict((path, s) for s, path in ranking)
        paths = [path for _, path in row]
        assert len(row) == min(k, len(ranking)) and len(set(paths)) == len(paths) and set(paths) <= set(score), context
        assert all(abs(s - score[path]) <= ATOL for s, path in row), (context, row)
        ranked = [score[path] for path in paths]
        assert all(a >= b - ATOL for a, b in zip(ranked, ranked[1:])), (context, row)
        left = [s for s, path in ranking if path not in set(paths)]
        assert not left or max(left) <= min(ranked) + ATOL, (context, row)


@pytest.fixture(scope="module")
def live(esa_export, base, tmp_path_factory):
    state = Live(esa_export, base, tmp_path_factory.mktemp("live"))
    yield state
    state.server.stop()


def ingest(live, client, images, start, count, camera="gate", time="2026-12-01T12:30:00Z"):
    files = [f for f, _, _ in images[start:start + count]]
    paths = [f"ingested/{f.name}" for f in files]
    done = client.ingest([f.read_bytes() for f in files], paths, [p for _, p, _ in images[start:start + count]],
                         [camera] * count, [time] * count)
    assert [d.error for d in done] == [""] * count
    live.added(files, paths, [camera] * count, [time] * count)
    return files, done


def test_an_ingested_image_is_found_by_its_description_its_image_and_itself(live, train_images):
    with live.client() as client:
        before = client.live_items()[0]
        files, done = ingest(live, client, train_images, 0, 3)
        assert [d.index for d in done] == [before, before + 1, before + 2]  # right after the base
        assert client.live_items() == [before + 3]
        captions = [c for _, _, c in train_images[:3]]
        everything = len(live.paths)
        assert_ranked(served(client.search(captions, k=everything)), live.reference(captions), everything)
        ranked = [[h.path for h in row] for row in client.search(captions, k=everything)]
        assert all(f"ingested/{f.name}" in row for f, row in zip(files, ranked))
        for f, d in zip(files, done):
            assert client.search_images(f.read_bytes(), k=1)[0][0].index == d.index  # an image finds itself
            hit = client.like(d.index, k=1)[0][0]
            assert (hit.path, hit.camera, hit.time) == (f"ingested/{f.name}", "gate", "2026-12-01T12:30:00.000Z")


def _png(w, h) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_bad_images_are_refused_one_by_one_and_the_good_ones_ingested(live, train_images):
    good = train_images[3][0]
    items = [(b"", "bad/empty.png", None, "empty \\(0 bytes\\)"),
             (b"GIF89a not really", "bad/garbage.gif", None, "not an image file this server reads"),
             (_png(4, 4), "bad/tiny.png", None, "is 4x4 pixels"),
             (b"\x89PNG" + bytes(MAX_IMAGE_BYTES), "bad/huge.png", None, f"at most {MAX_IMAGE_BYTES} are accepted"),
             (good.read_bytes(), "bad/when.png", "yesterday", "bad time 'yesterday'"),
             (good.read_bytes(), live.paths[0], None, "already in the gallery"),
             (good.read_bytes(), "ingested/ok.jpg", None, ""),
             (good.read_bytes(), "ingested/ok.jpg", None, "already in the gallery")]  # twice in one call
    with live.client() as client:
        before = client.live_items()[0]
        done = client.ingest([i[0] for i in items], [i[1] for i in items], times=[i[2] for i in items])
        for (_, path, _, message), d in zip(items, done):
            assert d.path == path
            if message:
                assert d.index is None and re.search(message, d.error), (path, d.error)
            else:
                assert d.index == before and d.error == ""
        live.added([good], ["ingested/ok.jpg"], [None], [None])
        assert client.live_items() == [before + 1]
        assert client.search("a person", k=1)  # the server is answering


def test_filters_equal_the_reference(live, train_images):
    rng = random.Random(11)
    with live.client() as client:
        ingest(live, client, train_images, 4, 2, camera="north", time="2026-12-01T05:00:00Z")
        captions = [c for _, _, c in train_images[10:14]]
        for _ in range(12):
            cameras = tuple(rng.sample(CAMERAS, rng.randint(0, 3)))
            lo = rng.choice([None, *range(0, 24)])
            hi = rng.choice([None, *range(lo or 0, 24)])
            since = None if lo is None else f"2026-12-01T{lo:02d}:00:00Z"
            until = None if hi is None else f"2026-12-01T{hi:02d}:59:59Z"
            k = rng.choice([1, 5, 1000])
            got = served(client.search(captions, k=k, filter=Filter(cameras, since, until)))
            assert_ranked(got, live.reference(captions, cameras, since, until), k, (cameras, since, until, k))
        with pytest.raises(SearchError, match="unknown camera"):
            client.search(captions[:1], filter=Filter(("nowhere",)))
    for window, message in [(("2026-11-30T19:00:01Z", "2026-12-01T00:00:00+05:00"), "since .* is after until"),
                            (("teatime", ""), "bad time 'teatime'")]:  # past the client's own checks
        with pytest.raises(InferenceServerException, match=message):
            raw_search(live.server.grpc_url, captions[0], *window)
    with pytest.raises(ValueError, match="is after"):  # the client says so before sending
        Filter(since="2026-12-02T00:00:00Z", until="2026-12-01T00:00:00Z")
    with pytest.raises(ValueError, match="bad time 'noon'"):
        Filter(since="noon")


def raw_search(url, text, since, until):
    import tritonclient.grpc as grpcclient
    inputs = [grpcclient.InferInput(n, [1, 1], t) for n, t in (("TEXT", "BYTES"), ("TOPK", "INT32"),
                                                             ("SINCE", "BYTES"), ("UNTIL", "BYTES"))]
    for tensor, value in zip(inputs, (text.encode(), 5, since.encode(), until.encode())):
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32 if isinstance(value, int) else object))
    return grpcclient.InferenceServerClient(url).infer("person_search", inputs)


def test_erased_items_are_gone_from_every_query_at_once(live, train_images):
    captions = [c for _, _, c in train_images[:3]]
    everything = len(live.paths)
    with live.client() as client:
        person = load_gallery(live.repo / "gallery_search" / "1" / "gallery.safetensors", with_sets=False).ids[0]
        erased = client.delete(paths=[live.paths[1], "ingested/ok.jpg", "nowhere.jpg"], persons=[int(person)])
        expected = {1, live.paths.index("ingested/ok.jpg")} | {
            i for i, p in enumerate(load_gallery(live.repo / "gallery_search" / "1" / "gallery.safetensors",
                                                 with_sets=False).ids.tolist()) if p == person}
        assert set(erased) == expected
        live.erased |= expected
        assert client.delete(paths=["nowhere.jpg"]) == []  # nothing matched: a defined, empty result
        assert_ranked(served(client.search(captions, k=everything)), live.reference(captions), everything)
        assert client.live_items() == [len(live.paths) - len(live.erased)]
        with pytest.raises(SearchError, match="erased"):
            client.like(1, k=1)  # gone after the restart too: the next test's kill -9 and restart


def test_every_acknowledged_item_survives_a_kill_9_during_a_long_ingest(live, train_images):
    acked, errors, stop = [], [], threading.Event()

    def long_ingest():
        with live.client() as client:
            for n, (f, pid, _) in enumerate(train_images[6:] * 10):
                if stop.is_set():
                    return
                path = f"stream/{n}_{f.name}"
                try:
                    (d,) = client.ingest([f.read_bytes()], [path], [pid])
                except SearchError as e:  # the kill: the call in flight is not acknowledged
                    errors.append(str(e))
                    return
                acked.append((path, d.index, f))
    worker = threading.Thread(target=long_ingest)
    worker.start()
    while len(acked) < 12 and worker.is_alive():
        stop.wait(0.05)
    live.restart(kill=True)
    stop.set()
    worker.join()
    assert len(acked) >= 12
    with live.client() as client:
        for path, index, _ in acked:
            assert client.like(index, k=1)[0][0].path == path
        with pytest.raises(SearchError, match="erased"):  # the erasures survived the crash too
            client.like(1, k=1)
        assert not live.erased & {h.index for h in client.search("a person", k=len(live.paths) + 100)[0]}
    # whatever the server took in, acknowledged or not (the call in flight), is the gallery now
    from serving.live_store import LiveStore
    store = LiveStore(live.repo / "gallery_search" / "1" / "live")
    _, rows, _ = store.read_since(len(live.paths), 0, 0)
    store.close()
    assert {p for p, _, _ in acked} <= {r[2] for r in rows}
    files = {f"stream/{n}_{f.name}": f for n, (f, _, _) in enumerate(train_images[6:] * 10)}
    live.added([files[r[2]] for r in rows], [r[2] for r in rows], [None] * len(rows), [None] * len(rows))


def tbps(*args):
    return run_command("serving.cli", *args, check=False)


def test_the_commands_ingest_search_by_image_and_like_filter_and_delete(live, train_images, tmp_path):
    url = live.server.grpc_url
    folder = tmp_path / "crops"
    folder.mkdir()
    files = []
    for f, _, _ in train_images[30:32]:
        files.append(folder / f"0777_{f.name}")  # Market-1501 naming: person 777
        files[-1].write_bytes(f.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "meta.csv").write_text(f"path,camera,time\n{files[0].name},south,2026-12-01T23:30:00Z\n")
    out = tbps("ingest", *files, folder / "broken.jpg", "--root", folder, "--meta", tmp_path / "meta.csv",
               "--url", url, "--quiet")
    assert out.returncode == 1 and "ingested 2 of 3 images; 1 refused" in out.stdout, out.stdout + out.stderr
    assert "refused broken.jpg: image 2 (broken.jpg) is not an image file" in out.stderr
    live.added(files, [f.name for f in files], ["south", None], ["2026-12-01T23:30:00Z", None])
    hits = json.loads(tbps("search", "--image", files[1], "-k", 1, "--url", url, "--json").stdout)[0]["hits"]
    assert hits[0]["path"] == files[1].name and hits[0]["person_id"] == 777
    like = json.loads(tbps("search", "--like", hits[0]["index"], "-k", 1, "--url", url, "--json").stdout)
    assert like[0]["text"] == f"like #{hits[0]['index']}" and like[0]["hits"][0]["path"] == files[1].name
    caption = train_images[30][2]
    got = json.loads(tbps("search", caption, "-k", 50, "--camera", "south", "--since", "2026-12-01T20:00:00Z",
                          "--url", url, "--json").stdout)[0]["hits"]
    assert_ranked([[(h["score"], h["path"]) for h in got]], live.reference([caption], ("south",), "2026-12-01T20:00:00Z"),
                  50)
    assert files[0].name in [h["path"] for h in got]
    for args, message in [((), "search by one of: descriptions, --image FILE or --like INDEX"),
                          (("x", "--since", "noon"), "bad time 'noon'"),
                          (("x", "--like", 3), "got text and --like")]:
        bad = tbps("search", *args, "--url", url)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    out = tbps("delete", "--person", 777, "--url", url)
    assert out.returncode == 0 and out.stdout.startswith("erased 2 items:"), out.stdout + out.stderr
    live.erased |= {live.paths.index(f.name) for f in files}
    nothing = tbps("delete", "--path", "never/was.jpg", "--url", url)
    assert nothing.returncode == 0 and "erased nothing: no live item has path 'never/was.jpg'" in nothing.stderr


def test_compaction_ranks_as_the_live_gallery_did(live, train_images):
    captions = [c for _, _, c in train_images[:5]]
    everything = len(live.paths)
    with live.client() as client:
        before = served(client.search(captions, k=everything))
    assert_ranked(before, live.reference(captions), everything)
    live.server.stop()
    report = compact_repository(live.repo)
    assert report["dropped"] == len(live.erased) and report["kept"] == len(live.paths) - len(live.erased)
    assert gallery_versions(live.repo) == [1, 2]
    live.server = TritonServer(live.repo).start()
    with live.client() as client:
        assert_ranked(served(client.search(captions, k=everything)), before, everything)
        assert client.live_items() == [report["kept"]]
