"""The project's JSON records (a checkpoint's config.json, an export's manifest.json, an engine
folder's engines.json): written atomically, read back checked for their format, version and
fields, one way for every record; and the sync of a file or folder by its path (the gallery's
writer, the audit trail), torch-free for the commands that need no model."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_record(path: Path, record: dict) -> Path:
    """`record` as JSON at `path`, atomically: a reader sees the old record or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def sync_path(path: str | os.PathLike, data_only: bool = False) -> None:
    """fsync a file or a folder (its entries) by path; `data_only`: fdatasync, a file's bytes and
    size without its times."""
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def _has(record, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(record, dict) or part not in record:
            return False
        record = record[part]
    return True


def read_json_record(path: Path, fmt: str, version: int, keys: tuple[str, ...], error: type[ValueError],
                     absent: type[Exception], absent_hint: str) -> dict:
    """The record at `path` if it is a `fmt` of version <= `version` with every one of `keys`
    ("a.b": field b of object a); `absent` (saying `absent_hint`) where there is none, `error`
    (one line) otherwise."""
    if not path.is_file():
        raise absent(f"no {path.name} in {path.parent}: {absent_hint}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON ({e})") from None
    missing = [k for k in dict.fromkeys(("format", "version", *keys)) if not _has(record, k)]
    if missing:
        raise error(f"{path}: missing field(s) {missing}")
    if record["format"] != fmt or record["version"] > version:
        raise error(f"{path}: format {record['format']!r} version {record['version']} "
                    f"is not a {fmt} of version <= {version}")
    return record
