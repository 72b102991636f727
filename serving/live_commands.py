"""The live gallery's commands: `tbps ingest`, `tbps delete` (through a running server) and
`tbps compact` (offline, on a model repository).

    tbps ingest FILE... [--root DIR] [--meta FILE.csv|.jsonl] [--person ID] [--url U ...]
    tbps delete --path P [--path P2] | --person ID [--url U ...]
    tbps compact REPO [--audit DIR]

An ingested image is stored under its path relative to `--root` (default: as given); its person
id is `--person`, else the Market-1501 file naming's (`0042_c1s1_...jpg` is 42), else -1. With
several `--url` (shards) each request goes to the shard with the fewest live items and an
erasure to all. What the server answered for is on disk: a crash loses none of it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

DEFAULT_URL = "127.0.0.1:8001"


def _stored_paths(files: list[str], root: str | None) -> list[str]:
    if root is None:
        return [Path(f).as_posix() for f in files]
    base = Path(root).resolve()
    out = []
    for f in files:
        try:
            out.append(Path(f).resolve().relative_to(base).as_posix())
        except ValueError:
            raise ValueError(f"{f} is not under --root {root}") from None
    return out


def cmd_ingest(a) -> int:
    from export.build_gallery import PERSON_PREFIX
    from export.gallery_meta import sidecar_fields
    from serving.client import SearchClient, SearchError
    missing = [f for f in a.files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                        if len(missing) > 1 else ""))
    paths = _stored_paths(a.files, a.root)
    fields = sidecar_fields(a.meta, paths) if a.meta else [("", "")] * len(paths)  # checked before any upload
    persons = [a.person if a.person is not None else int(m.group(1)) if (m := PERSON_PREFIX.match(Path(p).name))
               else -1 for p in paths]
    added, refused = 0, 0
    with SearchClient(a.url or [DEFAULT_URL], credentials=credentials(a)) as client, tqdm(total=len(paths), unit="img", disable=a.quiet,
                                                              desc="ingest") as bar:
        for start in range(0, len(paths), a.batch):
            rows = range(start, min(start + a.batch, len(paths)))
            try:
                done = client.ingest([Path(a.files[r]).read_bytes() for r in rows], [paths[r] for r in rows],
                                     [persons[r] for r in rows], [fields[r][0] for r in rows],
                                     [fields[r][1] for r in rows])
            except SearchError as e:
                raise ValueError(f"the server refused the ingest after {added} images were added: {e}") from None
            for item in done:
                if item.index is None:
                    refused += 1
                    tqdm.write(f"refused {item.path}: {item.error}", file=sys.stderr)
                else:
                    added += 1
            bar.update(len(rows))
    print(f"ingested {added} of {len(paths)} images" + (f"; {refused} refused (above)" if refused else ""))
    return 1 if refused else 0


def cmd_delete(a) -> None:
    from serving.client import SearchClient, SearchError
    if not a.path and not a.person:
        raise ValueError("name what to erase: --path P or --person ID")
    try:
        with SearchClient(a.url or [DEFAULT_URL], credentials=credentials(a)) as client:
            erased = client.delete(a.path, a.person)
    except SearchError as e:
        raise ValueError(f"the server refused the erasure: {e}") from None
    if erased:
        print(f"erased {len(erased)} items: {' '.join(map(str, erased))}")
    else:
        print("erased nothing: no live item has " + " or ".join(
            [f"path {p!r}" for p in a.path] + [f"person {p}" for p in a.person]), file=sys.stderr)


def cmd_compact(a) -> None:
    import getpass

    from serving.repository import compact_repository
    r = compact_repository(a.repository)
    if a.audit:  # the served gallery's trail: the compaction is an operator's act on it
        from serving.audit import AuditLog
        log = AuditLog(a.audit)
        log.write([{"event": "compact", "who": f"tbps compact ({getpass.getuser()})", "repository": str(a.repository),
                    **{k: r[k] for k in ("version", "kept", "dropped", "added", "bytes_before", "bytes_after")}}])
        log.close()
    print(f"compacted into gallery version {r['version']} ({r['gallery']}): kept {r['kept']} items "
          f"({r['added']} added live), dropped {r['dropped']} erased; {r['bytes_before']:,} -> {r['bytes_after']:,} "
          f"bytes")


def add_connection(p: argparse.ArgumentParser) -> None:
    """--url and the credentials of a client command (the key from a file or TBPS_KEY, never an argument)."""
    p.add_argument("--url", action="append", default=[],
                   help=f"host:port of the server's gRPC endpoint; repeat for each shard (default {DEFAULT_URL})")
    p.add_argument("--tls-ca", default=None, metavar="PEM", help="TLS: the CA certificate that signed the server's")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="mutual TLS: this client's certificate")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="mutual TLS: this client's private key")
    p.add_argument("--key-file", default=None, help="a file holding this client's API key (default: $TBPS_KEY)")


def credentials(a):
    from serving.access import secret_from
    from serving.client import Credentials
    return Credentials(a.tls_ca, a.tls_cert, a.tls_key, secret_from(a.key_file, "TBPS_KEY"))


def add_commands(sub) -> None:
    p = sub.add_parser("ingest", help="add images to a running server's live gallery, durably",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="image files (JPEG, PNG, BMP, WebP)")
    p.add_argument("--root", default=None, help="store each path relative to this folder (default: as given)")
    p.add_argument("--meta", default=None, help="camera and time per image: a .csv or .jsonl sidecar "
                                                "(path,camera,time; paths as stored)")
    p.add_argument("--person", type=int, default=None, help="the person id of every image")
    p.add_argument("--batch", type=int, default=32, help="images per request")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_connection(p)
    p.set_defaults(fn=cmd_ingest)

    p = sub.add_parser("delete", help="erase images or people from a running server's live gallery, durably")
    p.add_argument("--path", action="append", default=[], help="a stored image path (repeatable)")
    p.add_argument("--person", type=int, action="append", default=[], help="a person id: all their images")
    add_connection(p)
    p.set_defaults(fn=cmd_delete)

    p = sub.add_parser("compact", help="offline: fold a repository's live additions and erasures into a new "
                                       "gallery version")
    p.add_argument("repository", help="a model repository (tbps repo) whose server is stopped")
    p.add_argument("--audit", default=None, metavar="DIR", help="record the compaction in the server's audit trail")
    p.set_defaults(fn=cmd_compact)
