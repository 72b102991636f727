"""The audit trail's chain on real files: concurrent writers in separate processes (each write
synced, or the weaker mode's background sync), edits, removals, a torn last line, a kill -9,
rotation and pruning."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys

import pytest

from serving.audit import AuditLog, prune, show, sync_ms_from, verify


def _writer(folder, name, n, sync_ms=0):
    log = AuditLog(folder, max_bytes=4096, sync_ms=sync_ms)
    for i in range(n):
        log.write([{"event": "search", "who": name, "text": f"query {i}", "k": 5}])
    log.close()


def lines(folder):
    return [line for p in sorted(folder.glob("audit-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))
            for line in p.read_bytes().splitlines(keepends=True)]


@pytest.mark.parametrize("sync_ms", [(0, 0, 0, 0), (5, 5, 0, 50)], ids=["synced", "some-in-the-weaker-mode"])
def test_writers_in_several_processes_make_one_chain_with_nothing_missing(tmp_path, sync_ms):
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_writer, args=(tmp_path, f"w{i}", 60, ms)) for i, ms in enumerate(sync_ms)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    v = verify(tmp_path)
    assert v.ok and v.records == 240, v.problems
    assert len(list(tmp_path.glob("audit-*.jsonl"))) > 1  # rotated at 4 KB, the chain running on
    for i in range(4):
        assert sorted(int(r["text"].split()[1]) for r in show(tmp_path, user=f"w{i}")) == list(range(60))



@pytest.mark.parametrize("sync_ms", [0, 5])
def test_a_failed_sync_fails_every_later_write(tmp_path, monkeypatch, sync_ms):
    """Linux may drop the pages a failed fdatasync could not write, and a later sync succeed over
    that hole: once one fails, no answer leaves unrecorded (the default mode's write raises at
    once, the weaker mode's next one)."""
    import time
    log = AuditLog(tmp_path, sync_ms=sync_ms)
    log.write([{"event": "search", "who": "a", "text": "query 0"}])
    real = os.fdatasync

    def failing_disk(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fdatasync", failing_disk)
    if sync_ms:
        log.write([{"event": "search", "who": "a", "text": "query 1"}])  # in the page cache: its sync fails later
        time.sleep(10 * sync_ms / 1000)
    else:
        with pytest.raises(OSError, match="Input/output error"):
            log.write([{"event": "search", "who": "a", "text": "query 1"}])
    monkeypatch.setattr(os, "fdatasync", real)
    with pytest.raises(OSError, match="the audit trail's sync failed: .*Input/output error"):
        log.write([{"event": "search", "who": "a", "text": "query 2"}])
    assert [r["text"] for r in show(tmp_path)] == ["query 0", "query 1"] and verify(tmp_path).ok
    log.close()

@pytest.mark.parametrize("tamper", ["edit", "remove", "swap"])
def test_an_edited_removed_or_reordered_line_breaks_the_chain(tmp_path, tamper):
    log = AuditLog(tmp_path)
    for i in range(5):
        log.write([{"event": "search", "who": "alice", "text": f"a man in grey {i}"}])
    (path,) = tmp_path.glob("audit-*.jsonl")
    rows = path.read_bytes().splitlines(keepends=True)
    if tamper == "edit":
        rows[2] = rows[2].replace(b"alice", b"bob__")
    elif tamper == "remove":
        del rows[2]
    else:
        rows[2], rows[3] = rows[3], rows[2]
    path.write_bytes(b"".join(rows))
    v = verify(tmp_path)
    assert not v.ok and v.problems[0].startswith(f"{path.name}:{4 if tamper == 'edit' else 3}: breaks the chain")


def test_a_torn_last_line_is_reported_never_accepted_and_the_next_writer_owns_up_to_it(tmp_path):
    log = AuditLog(tmp_path)
    log.write([{"event": "search", "who": "a", "text": "one"}, {"event": "search", "who": "a", "text": "two"}])
    (path,) = tmp_path.glob("audit-*.jsonl")
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"seq":2,"time":"2026-12-04T0')  # a crash mid-write
    v = verify(tmp_path)
    assert not v.ok and v.records == 2 and "the last line is torn" in v.problems[0]
    log.write([{"event": "search", "who": "a", "text": "three"}])
    v = verify(tmp_path)
    assert v.ok and v.records == 4 and len(v.torn) == 1, v.problems  # two, the torn record, three
    records = list(show(tmp_path))
    assert [r["event"] for r in records] == ["search", "search", "torn", "search"] and records[2]["bytes"] == 29
    path.write_bytes(path.read_bytes().replace(b'"event":"torn"', b'"event":"tore"'))
    assert not verify(tmp_path).ok


def test_pruning_keeps_what_remains_verifiable_and_a_silent_removal_is_caught(tmp_path):
    log = AuditLog(tmp_path, max_bytes=300)
    for i in range(12):
        log.write([{"event": "search", "who": "a", "text": f"q{i}"}])
    files = sorted(tmp_path.glob("audit-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))
    cut = json.loads(files[2].read_bytes().splitlines()[0])["time"]  # files 0 and 1 end before it
    report = prune(tmp_path, cut, who="admin")
    assert report["removed_files"] == 2 and not files[0].exists() and files[2].exists()
    v = verify(tmp_path)
    assert v.ok and v.records == 12 - report["removed_records"] + 1, v.problems
    files[2].unlink()  # without a prune record
    assert "breaks the chain" in verify(tmp_path).problems[0] or "no prune record" in verify(tmp_path).problems[0]


def test_the_commands_make_keys_and_accounts_and_verify_show_and_prune_a_trail(tmp_path):
    from serving.access import read_keys
    from serving.ui_auth import read_accounts
    from tests.conftest import run_command
    made = run_command("serving.cli", "keys", "add", "vera", "--role", "viewer", "--file", str(tmp_path / "k.json"))
    key = made.stdout.strip().splitlines()[-1]
    assert len(key) >= 40 and key not in (tmp_path / "k.json").read_text()  # the file holds its hash only
    assert [k["name"] for k in read_keys(tmp_path / "k.json")] == ["vera"]
    assert (tmp_path / "k.json").stat().st_mode & 0o077 == 0
    bad = run_command("serving.cli", "keys", "add", "vera", "--file", str(tmp_path / "k.json"), check=False)
    assert bad.returncode == 2 and "is taken" in bad.stderr and "Traceback" not in bad.stderr
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "serving.cli", "accounts", "add", "alice", "--file", str(tmp_path / "u.json")],
                   input="a long enough password\n", text=True, check=True, capture_output=True)
    assert read_accounts(tmp_path / "u.json")["alice"]["role"] == "viewer"
    log = AuditLog(tmp_path / "audit")
    log.write([{"event": "search", "who": "vera", "query": {"texts": ["a man in grey"]}}])
    log.write([{"event": "search", "who": "otto", "query": {"texts": ["a woman in red"]}}])
    shown = run_command("serving.cli", "audit", "show", str(tmp_path / "audit"), "--user", "vera", "--json")
    assert [json.loads(line)["query"]["texts"] for line in shown.stdout.splitlines()] == [["a man in grey"]]
    ok = run_command("serving.cli", "audit", "verify", str(tmp_path / "audit"))
    assert "2 records from seq 0 verified" in ok.stdout
    (path,) = (tmp_path / "audit").glob("audit-*.jsonl")
    path.write_bytes(path.read_bytes().replace(b"a man in grey", b"a man in blue"))
    broken = run_command("serving.cli", "audit", "verify", str(tmp_path / "audit"), check=False)
    assert broken.returncode == 1 and "NOT VERIFIED: audit-0.jsonl:2: breaks the chain" in broken.stderr
    bad = run_command("serving.cli", "audit", "prune", str(tmp_path / "audit"), "--before", "yesterday", check=False)
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr


_ACKNOWLEDGING_WRITER = """
import sys
from serving.audit import AuditLog
log = AuditLog(sys.argv[1], max_bytes=2048, sync_ms=float(sys.argv[2]))
for i in range(100_000):
    log.write([{"event": "search", "who": "w", "text": f"query {i}"}])
    print(i, flush=True)  # acknowledged: the answer would leave now
"""


@pytest.mark.parametrize("sync_ms", [0, 20])
def test_a_kill_9_keeps_every_acknowledged_record_and_the_chain_verifies(tmp_path, sync_ms):
    """The weaker mode loses nothing to a crash of the process: its lines are in the page cache
    (only a power loss can take the last sync_ms of them)."""
    writer = subprocess.Popen([sys.executable, "-c", _ACKNOWLEDGING_WRITER, str(tmp_path), str(sync_ms)],
                              stdout=subprocess.PIPE, text=True)
    acknowledged = [writer.stdout.readline() for _ in range(300)]
    os.kill(writer.pid, signal.SIGKILL)
    acknowledged += writer.stdout.read().splitlines()
    writer.wait()
    v = verify(tmp_path)
    assert v.ok or all("the last line is torn" in p for p in v.problems), v.problems
    written = {int(r["text"].split()[1]) for r in show(tmp_path)}
    assert {int(a) for a in acknowledged} <= written and v.records >= len(acknowledged)
    assert len(list(tmp_path.glob("audit-*.jsonl"))) > 1  # rotated, the chain running on
    log = AuditLog(tmp_path)  # the next writer owns up to a torn line, and the chain verifies
    log.write([{"event": "search", "who": "next", "text": "after the crash"}])
    log.close()
    assert verify(tmp_path).ok


def test_the_weaker_mode_is_asked_for_in_milliseconds(tmp_path):
    assert sync_ms_from(None) == sync_ms_from("") == 0 and sync_ms_from("5") == 5.0
    for bad in ("five", "-1", "60000"):
        with pytest.raises(ValueError, match=f"TBPS_AUDIT_SYNC_MS={bad!r}: expected milliseconds"):
            sync_ms_from(bad)
    from serving.launch import Security, ServerError
    with pytest.raises(ServerError, match="TBPS_AUDIT_SYNC_MS='-1'"):
        Security(audit_dir=str(tmp_path), audit_sync_ms=-1).check("127.0.0.1", False)
    from tests.conftest import run_command  # tbps serve --audit-sync-ms: refused in one line before anything starts
    done = run_command("serving.cli", "serve", tmp_path, "--audit", tmp_path / "trail", "--audit-sync-ms", "-1",
                       check=False)
    assert done.returncode == 2 and done.stderr.strip().endswith("expected milliseconds from 0 (every write synced "
                                                                 "before its answer leaves) to 10000")
    assert "--audit-sync-ms / TBPS_AUDIT_SYNC_MS='-1.0'" in done.stderr and "Traceback" not in done.stderr
