"""The results page: what write_report puts in it, `tbps report` end to end, and a real render
in headless chromium (skipped where no chromium is installed)."""
import base64
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from serving.client import Hit
from serving.report import MATCH_COLOUR, find_chromium, report_from_checkpoint, spread, write_report

REPO = Path(__file__).resolve().parents[2]
FIGURE = re.compile(r'<figure class="(match|other)" title="rank (\d+), person (-?\d+), ([^"]*)"')
DATA_URI = re.compile(r'src="data:image/jpeg;base64,([^"]+)"')
METRICS = {"R1": 50.0, "R5": 75.25, "R10": 100.0, "mAP": 60.5, "mINP": 40.125}


@pytest.fixture(scope="module")
def test_split(synthetic_data):
    from trainer.data.formats import load_dataset
    data = load_dataset(synthetic_data)
    return data.root, data.test


def hits_of(root, entries):
    return [Hit(r + 1, 1.0 - r / 10, e.pid, str(e.path.relative_to(root)), e.image_id) for r, e in enumerate(entries)]


def test_text_is_escaped_and_the_page_has_no_script(test_split, tmp_path):
    root, entries = test_split
    evil = '<script>alert("x")</script> & a man in <b>red</b>'
    out = write_report(tmp_path / "r.html", [{"text": evil, "person_id": entries[0].pid, "hits": hits_of(root, entries[:2])}],
                       METRICS, root, title="<i>title</i>", info={"<k>": "<v>"})
    page = out.read_text()
    assert "<script" not in page and "<b>" not in page and "<i>" not in page and "<k>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a man in &lt;b&gt;red&lt;/b&gt;" in page
    assert "&lt;i&gt;title&lt;/i&gt;" in page and "&lt;k&gt;" in page and "&lt;v&gt;" in page
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, then renamed


def test_metrics_table_in_order_with_one_decimal(test_split, tmp_path):
    root, entries = test_split
    page = write_report(tmp_path / "r.html", [], METRICS, root).read_text()
    assert re.findall(r"<th>([^<]+)</th>", page)[:5] == ["R@1", "R@5", "R@10", "mAP", "mINP"]
    assert re.findall(r'<td data-metric="(\w+)">([^<]+)</td>', page) == [
        ("R1", "50.0"), ("R5", "75.2"), ("R10", "100.0"), ("mAP", "60.5"), ("mINP", "40.1")]


def test_outlines_exactly_the_true_matches_in_rank_order(test_split, tmp_path):
    root, entries = test_split
    pid = entries[0].pid
    shown = entries[::-1][:10]  # another person first, this one's images last
    assert {e.pid == pid for e in shown} == {True, False}
    page = write_report(tmp_path / "r.html", [{"text": "a person", "person_id": pid, "hits": hits_of(root, shown)}],
                        METRICS, root).read_text()
    figures = FIGURE.findall(page)
    assert [int(rank) for _, rank, _, _ in figures] == list(range(1, len(shown) + 1))
    assert [cls == "match" for cls, *_ in figures] == [e.pid == pid for e in shown]
    assert [path for *_, path in figures] == [str(e.path.relative_to(root)) for e in shown]
    first = next(r for r, e in enumerate(shown, 1) if e.pid == pid)
    assert f"first true match at rank {first}" in page


def test_thumbnails_are_embedded_jpegs_at_the_asked_height(test_split, tmp_path):
    root, entries = test_split
    hits = hits_of(root, entries[:3])
    queries = [{"text": "q1", "person_id": entries[0].pid, "hits": hits},
               {"text": "q2", "person_id": entries[1].pid, "hits": hits[::-1]}]
    page = write_report(tmp_path / "r.html", queries, METRICS, root, thumb_height=50).read_text()
    uris = DATA_URI.findall(page)
    assert len(uris) == 6 and len(set(uris)) == 3  # each image encoded once, reused
    for uri, entry in zip(uris, entries):
        thumb = Image.open(io.BytesIO(base64.b64decode(uri)))
        with Image.open(entry.path) as original:
            expected_width = round(original.width * 50 / original.height)
        assert thumb.format == "JPEG" and thumb.size == (expected_width, 50)
    assert "could not be read" not in page


def test_a_missing_or_broken_image_is_a_grey_box_and_counted(test_split, tmp_path):
    root, entries = test_split
    (tmp_path / "broken.jpg").write_text("not an image")
    (tmp_path / "good.jpg").write_bytes(entries[0].path.read_bytes())
    hits = [Hit(1, 0.9, 1, "good.jpg", 0), Hit(2, 0.8, 1, "gone/<missing>.jpg", 1), Hit(3, 0.7, 2, "broken.jpg", 2)]
    page = write_report(tmp_path / "r.html", [{"text": "q", "person_id": 1, "hits": hits}], METRICS, tmp_path).read_text()
    assert len(FIGURE.findall(page)) == 3 and len(DATA_URI.findall(page)) == 1
    assert '<span class="missing" style="width:96px;height:96px">gone/&lt;missing&gt;.jpg</span>' in page
    assert '<span class="missing" style="width:96px;height:96px">broken.jpg</span>' in page
    assert "2 image(s) could not be read" in page


def test_spread_picks_evenly_with_both_ends():
    assert spread(5, 20) == [0, 1, 2, 3, 4]
    assert spread(101, 5) == [0, 25, 50, 75, 100]
    assert spread(10, 1) == [0]


@pytest.fixture(scope="module")
def cli_page(esa_run, gallery, synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    done = subprocess.run([sys.executable, "-m", "serving.cli", "report", str(esa_run), str(gallery),
                           "--data", str(synthetic_data), "--queries", "4", "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {out}"
    return out


def test_tbps_report_ranks_like_the_torch_reference(cli_page, esa_run, gallery, synthetic_data):
    import torch

    from export.gallery import load_gallery
    from kernels import set_similarity_reference
    from trainer.checkpoint import load_checkpoint
    from trainer.data.formats import load_dataset
    from trainer.evaluate import encode_captions, rank_metrics

    ckpt = load_checkpoint(esa_run)
    g = load_gallery(gallery)
    entries = load_dataset(synthetic_data).test
    texts, pids = [c for e in entries for c in e.captions], [e.pid for e in entries for _ in e.captions]
    queries = encode_captions(ckpt.model, ckpt.tokenizer, texts)
    scores = set_similarity_reference(queries, g.sets.float(), alpha=g.alpha, weight=g.weight, margin=g.margin)
    expected = rank_metrics(scores, pids, g.ids)

    page = cli_page.read_text()
    shown = [texts[i] for i in spread(len(texts), 4)]
    assert re.findall(r'<p class="caption">([^<]*)</p>', page) == shown
    for key, value in re.findall(r'<td data-metric="(\w+)">([^<]+)</td>', page):
        assert float(value) == pytest.approx(expected[key], abs=0.051), key
    k = min(10, len(g))
    figures = FIGURE.findall(page)
    assert len(figures) == 4 * k
    best = torch.stack([scores[texts.index(t)] for t in shown]).argmax(1).tolist()
    top1 = [(int(pid), path) for _, rank, pid, path in figures if rank == "1"]
    assert top1 == [(int(g.ids[i]), g.paths[i]) for i in best]
    query_pids = [pids[texts.index(t)] for t in shown for _ in range(k)]
    assert [cls == "match" for cls, *_ in figures] == [int(f[2]) == q for f, q in zip(figures, query_pids)]
    assert "could not be read" not in page and "with the adaptive margin" in page and ckpt.fingerprint in page


def test_report_refuses_another_checkpoints_gallery_and_an_empty_split(tiny_run, esa_run, gallery, test_split,
                                                                       tmp_path):
    from export.gallery import GalleryError
    root, entries = test_split
    with pytest.raises(GalleryError, match="rebuild the gallery with this checkpoint"):
        report_from_checkpoint(tiny_run, gallery, root, tmp_path / "r.html", device="cpu")
    # a dataset of one training image: its val split is empty
    data = tmp_path / "one"
    (data / "imgs").mkdir(parents=True)
    (data / "imgs" / "a.jpg").write_bytes(entries[0].path.read_bytes())
    (data / "reid_raw.json").write_text('[{"id": 1, "file_path": "a.jpg", "captions": ["a man"], "split": "train"}]')
    with pytest.raises(ValueError, match="split 'val' of .* has no captions"):
        report_from_checkpoint(esa_run, gallery, data, tmp_path / "r.html", split="val", device="cpu")
    with pytest.raises(ValueError, match="queries must be at least 1"):
        report_from_checkpoint(esa_run, gallery, root, tmp_path / "r.html", queries=0)
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(find_chromium() is None,  # checked before the fixtures train anything
                    reason="no chromium on PATH (Debian: apt-get install chromium): the page's render is not checked")
def test_the_page_renders_in_headless_chromium(cli_page, tmp_path):
    png = tmp_path / "page.png"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "render_report.py"), str(cli_page),
                           "--out", str(png), "--width", "1280", "--height", "2000"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with Image.open(png) as image:
        assert image.size == (1280, 2000)
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200, "the screenshot is (nearly) blank"
    green = tuple(int(MATCH_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    outlined = sum(n for n, c in colours if max(abs(a - b) for a, b in zip(c, green)) <= 8)
    # a 4 px outline around each true match's 96 px high thumbnail (the legend swatch alone is ~300 px)
    matches = cli_page.read_text().count('<figure class="match"')
    assert matches and outlined > matches * 2 * 4 * 96


def test_an_8bit_gallery_is_reported_as_its_dequantized_sets(esa_run, gallery, synthetic_data, tmp_path):
    """Scoring an 8-bit gallery's int8 codes as if they were values ranks nonsense; the report
    scores its dequantized sets, as kernels.search with the scale does."""
    from export.gallery import load_gallery
    from export.gallery_writer import GalleryWriter, copy_items
    from kernels import dequantize_sets, set_similarity_reference
    from trainer.checkpoint import load_checkpoint
    from trainer.data.formats import load_dataset
    from trainer.evaluate import encode_captions, rank_metrics

    g16 = load_gallery(gallery)
    with GalleryWriter(tmp_path / "g8", g16.set_shape, g16.fingerprint, g16.alpha, g16.weight, g16.root, g16.cameras,
                       True, dtype="int8") as w:
        copy_items(g16, w)  # quantized by the writer
    g8 = load_gallery(tmp_path / "g8")
    page = report_from_checkpoint(esa_run, tmp_path / "g8", synthetic_data, tmp_path / "r.html", queries=2,
                                  device="cpu").read_text()
    ckpt = load_checkpoint(esa_run)
    entries = load_dataset(synthetic_data).test
    queries = encode_captions(ckpt.model, ckpt.tokenizer, [c for e in entries for c in e.captions])
    scores = set_similarity_reference(queries, dequantize_sets(g8.sets, g8.scale), alpha=g8.alpha, weight=g8.weight,
                                      margin=g8.margin)
    expected = rank_metrics(scores, [e.pid for e in entries for _ in e.captions], g8.ids)
    for key, value in re.findall(r'<td data-metric="(\w+)">([^<]+)</td>', page):
        assert float(value) == pytest.approx(expected[key], abs=0.051), key
