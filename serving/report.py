"""The results page: one self-contained HTML file showing, for a sample of captions, the top-10
gallery images (true matches outlined in green) and the metrics over the whole split.

    tbps report CKPT GALLERY --data DIR [--split test] [--queries 20] [--out report.html]

`write_report` renders hits from anywhere (kernels.search in process, or the gRPC server's);
`report_from_checkpoint` computes them in process. Thumbnails are embedded as base64 JPEG
data URIs, so the page can be copied or mailed on its own. `render_png` screenshots a page
with headless chromium (benchmarks/render_report.py, tests).
"""
from __future__ import annotations

import base64
import html
import io
import numbers
import os
import re
import shutil
import subprocess
from pathlib import Path

from PIL import Image

K = 10  # hits per caption in report_from_checkpoint
MATCH_COLOUR = "#00a040"  # the outline of a true match; tests look for it in screenshots
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

CSS = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; color: #222; margin: 0; background: #fafafa; }}
main {{ max-width: 1200px; margin: 0 auto; padding: 16px 24px; }}
h1 {{ font-size: 22px; margin: 4px 0 12px; }}
table {{ border-collapse: collapse; margin: 0 0 12px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ background: #eee; }}
table.info th, table.info td {{ text-align: left; font-weight: normal; }}
.warning {{ background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; }}
.legend span {{ display: inline-block; width: 14px; height: 14px; vertical-align: middle;
               margin: 0 4px 0 12px; border: 4px solid transparent; background: #bbb; }}
.legend span.match {{ border-color: {MATCH_COLOUR}; }}
section {{ background: #fff; border: 1px solid #ddd; border-radius: 4px; margin: 10px 0; padding: 8px 12px; }}
.caption {{ margin: 0 0 2px; font-size: 15px; }}
.meta {{ color: #666; font-size: 12px; margin: 0 0 6px; }}
.hits {{ display: flex; flex-wrap: wrap; gap: 6px; }}
figure {{ margin: 0; min-width: 64px; text-align: center; }}
figure .frame {{ display: inline-block; border: 4px solid transparent; line-height: 0; }}
figure.match .frame {{ border-color: {MATCH_COLOUR}; }}
figcaption {{ font-size: 11px; color: #444; }}
.missing {{ display: inline-block; background: #ccc; color: #333; font-size: 9px; line-height: 1.2;
           overflow-wrap: anywhere; overflow: hidden; box-sizing: border-box; padding: 2px; }}
"""


def _metric_label(key: str) -> str:
    return re.sub(r"^R(\d+)$", r"R@\1", key)


def _number(value) -> str:
    """Percentages with one decimal; counts and text as they are."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{value:.1f}"
    return str(value)


class _Thumbnails:
    """Data URIs of resized images, read once per path; unreadable files are counted, not fatal."""

    def __init__(self, root: Path, height: int):
        self.root, self.height = Path(root), height
        self.cache: dict[str, str | None] = {}

    def uri(self, path: str) -> str | None:
        if path not in self.cache:
            try:
                with Image.open(self.root / path) as image:
                    image = image.convert("RGB")
                    width = max(1, round(image.width * self.height / image.height))
                    buffer = io.BytesIO()
                    image.resize((width, self.height), Image.LANCZOS).save(buffer, "JPEG", quality=85)
                self.cache[path] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            except OSError:  # missing, unreadable or not an image (UnidentifiedImageError is one)
                self.cache[path] = None
        return self.cache[path]

    @property
    def missing(self) -> list[str]:
        return [p for p, uri in self.cache.items() if uri is None]


def _hit_html(hit, query_pid: int, thumbs: _Thumbnails) -> str:
    match = hit.person_id == query_pid
    label = html.escape(f"rank {hit.rank}, person {hit.person_id}, {hit.path}")
    uri = thumbs.uri(hit.path)
    if uri is None:
        h = thumbs.height
        body = f'<span class="missing" style="width:{h}px;height:{h}px">{html.escape(hit.path)}</span>'
    else:
        body = f'<img src="{uri}" height="{thumbs.height}" alt="{label}">'
    return (f'<figure class="{"match" if match else "other"}" title="{label}"><span class="frame">{body}</span>'
            f'<figcaption>#{hit.rank} &middot; {hit.score:.3f}<br>person {hit.person_id}</figcaption></figure>')


def _query_html(query: dict, thumbs: _Thumbnails) -> str:
    hits = query["hits"]
    matches = [h.rank for h in hits if h.person_id == query["person_id"]]
    found = f"first true match at rank {matches[0]}" if matches else f"no true match in the top {len(hits)}"
    figures = "\n".join(_hit_html(h, query["person_id"], thumbs) for h in hits)
    return (f'<section><p class="caption">{html.escape(query["text"])}</p>'
            f'<p class="meta">person {html.escape(str(query["person_id"]))} &middot; {found}</p>'
            f'<div class="hits">\n{figures}\n</div></section>')


def write_report(out: str | os.PathLike, queries: list[dict], metrics: dict, gallery_root: str | os.PathLike,
                 title: str = "Text-based person search: results", thumb_height: int = 96,
                 info: dict | None = None) -> Path:
    """Write the page to `out` atomically. `queries`: dicts {"text", "person_id", "hits":
    [serving.client.Hit]} (hit paths relative to `gallery_root`); `metrics`: name -> percent
    (shown in the given order); `info`: free-form name -> value lines shown under them."""
    if thumb_height < 8:
        raise ValueError(f"thumb_height must be at least 8 pixels, got {thumb_height}")
    out = Path(out)
    thumbs = _Thumbnails(Path(gallery_root), thumb_height)
    sections = "\n".join(_query_html(q, thumbs) for q in queries)  # reads the images: fills thumbs.missing
    head = "".join(f"<th>{html.escape(_metric_label(k))}</th>" for k in metrics)
    cells = "".join(f'<td data-metric="{html.escape(k)}">{html.escape(_number(v))}</td>' for k, v in metrics.items())
    info_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in (info or {}).items())
    missing = thumbs.missing
    warning = (f'<p class="warning">{len(missing)} image(s) could not be read under '
               f'{html.escape(str(gallery_root))}: shown as grey boxes with their paths.</p>' if missing else "")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head>
<body><main>
<h1>{html.escape(title)}</h1>
<table class="metrics"><tr>{head}</tr><tr>{cells}</tr></table>
<table class="info">{info_rows}</table>
{warning}
<p class="legend">The best gallery images of each caption in rank order, with rank &middot; score and person id.
<span class="match"></span>same person as the caption <span></span>another person</p>
{sections if queries else "<p>No queries.</p>"}
</main></body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def spread(n: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(n), first and last included (all of them if count >= n)."""
    if count >= n:
        return list(range(n))
    if count == 1:
        return [0]
    return [round(i * (n - 1) / (count - 1)) for i in range(count)]


def report_from_checkpoint(checkpoint: str | os.PathLike, gallery_path: str | os.PathLike, data: str | os.PathLike,
                           out: str | os.PathLike, split: str = "test", queries: int = 20, device: str | None = None,
                           batch_size: int = 128, progress: bool = False) -> Path:
    """Search `gallery_path` with the captions of `data`'s `split` encoded by `checkpoint`, in
    process: metrics over every caption, top-10 of `queries` captions spread over the split."""
    import torch

    from export.gallery import load_gallery
    from kernels import dequantize_sets, search, set_scores
    from serving.client import Hit
    from trainer.checkpoint import load_checkpoint
    from trainer.data.formats import load_dataset
    from trainer.evaluate import blocked_metrics, encode_captions

    if queries < 1:
        raise ValueError(f"queries must be at least 1, got {queries}")
    pairs = [(c, e.pid) for e in load_dataset(data).split(split) for c in e.captions]
    if not pairs:
        raise ValueError(f"split {split!r} of {data} has no captions to query with")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = load_checkpoint(checkpoint, device)
    gallery = load_gallery(gallery_path, fingerprint=ckpt.fingerprint)
    texts, pids = [t for t, _ in pairs], [p for _, p in pairs]

    text_sets = encode_captions(ckpt.model, ckpt.tokenizer, texts, device, batch_size, progress).to(device)
    # an 8-bit gallery is scored as its dequantized sets (what kernels.search with its scale scores)
    stored = gallery.sets.float() if gallery.scale is None else dequantize_sets(gallery.sets, gallery.scale)
    gallery_sets = stored.to(device)
    margin = None if gallery.margin is None else gallery.margin.to(device)

    def score(query_sets, sets, margin=None):  # blocked_metrics passes the margin positionally
        return set_scores(query_sets, sets, alpha=gallery.alpha, weight=gallery.weight, margin=margin)

    metrics = blocked_metrics(text_sets, pids, gallery_sets, gallery.ids, score, margin)
    shown = spread(len(texts), queries)
    scores, index = search(text_sets[shown], gallery_sets, k=K, alpha=gallery.alpha, weight=gallery.weight,
                           margin=margin)
    ids = gallery.ids.tolist()
    results = [{"text": texts[q], "person_id": pids[q],
                "hits": [Hit(r + 1, s, ids[i], gallery.paths[i], i) for r, (s, i) in enumerate(zip(row_s, row_i))]}
               for q, row_s, row_i in zip(shown, scores.tolist(), index.tolist())]
    info = {"checkpoint": f"{ckpt.path} (fingerprint {ckpt.fingerprint})",
            "gallery": f"{gallery_path}: {len(gallery)} images under {gallery.root or '.'}"
                       + (", with the adaptive margin" if margin is not None else ""),
            "queries": f"all {len(texts)} captions of {data} [{split}] for the metrics; {len(shown)} shown"}
    return write_report(out, results, metrics, gallery.root, info=info)


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def render_png(page: str | os.PathLike, png: str | os.PathLike, width: int = 1280, height: int = 2000,
               timeout: float = 120) -> Path:
    """Screenshot `page` (an HTML file) at width x height with headless chromium."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
                                "on Debian: apt-get install chromium")
    page, png = Path(page).resolve(), Path(png).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"no such page: {page}")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)  # so a stale picture is never mistaken for this render's
    # --no-sandbox: chromium refuses to run as root (containers, CI) otherwise
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--screenshot={png}", f"--window-size={width},{height}", page.as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"chromium did not render {page} within {timeout:g} s") from None
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium failed to render {page} (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return png
