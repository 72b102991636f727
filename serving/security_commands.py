"""`tbps keys` (API keys by role, serving/access.py), `tbps accounts` (the search page's users,
serving/ui_auth.py) and `tbps audit` (the server's hash-chained audit trail, serving/audit.py).

    tbps keys add NAME --role viewer|operator --file KEYS   prints the new key once
    tbps keys remove NAME --file KEYS
    tbps keys list --file KEYS
    tbps accounts add NAME --role viewer|operator --file USERS   asks the password (or reads a line of stdin)
    tbps accounts remove|list ...
    tbps audit verify DIR                  the chain, the records, the head hash to keep elsewhere
    tbps audit show DIR [--user U] [--since ISO] [--json]
    tbps audit prune DIR --before ISO      drops whole files older than that; what remains verifies
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys


def cmd_keys(a) -> int:
    from serving.access import ROLES, add_key, read_keys, remove_key
    if a.action == "add":
        if a.role not in ROLES:
            raise ValueError(f"--role is one of {', '.join(ROLES)}")
        key = add_key(a.file, a.name, a.role)
        print(f"key {a.name!r} ({a.role}), shown once; give it to its holder, who sends it from a file "
              f"(--key-file) or $TBPS_KEY:\n{key}")
    elif a.action == "remove":
        remove_key(a.file, a.name)
        print(f"removed key {a.name!r} from {a.file} (a running server reads its keys at start: restart it)")
    else:
        for k in read_keys(a.file):
            print(f"{k['name']}\t{k['role']}\tsha256 {k['sha256'][:12]}...")
    return 0


def cmd_accounts(a) -> int:
    from serving.ui_auth import add_account, read_accounts, remove_account
    if a.action == "add":
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {a.name}: ")
            if getpass.getpass("again: ") != password:
                raise ValueError("the two passwords differ")
        else:
            password = sys.stdin.readline().rstrip("\n")
        add_account(a.file, a.name, a.role, password)
        print(f"account {a.name!r} ({a.role}) added to {a.file} (tbps ui --accounts {a.file} reads it at start)")
    elif a.action == "remove":
        remove_account(a.file, a.name)
        print(f"removed account {a.name!r} (a running page reads its accounts at start: restart it)")
    else:
        for user in read_accounts(a.file).values():
            print(f"{user['name']}\t{user['role']}")
    return 0


def _parse_time(value: str) -> str:
    """An ISO 8601 time as the log writes it (UTC, Z), so times compare as text."""
    import datetime as dt
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time (e.g. 2026-12-04T14:00:00Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def cmd_audit(a) -> int:
    from serving import audit
    if a.action == "verify":
        v = audit.verify(a.folder)
        for line in v.torn:
            print(line)
        for line in v.problems:
            print(f"NOT VERIFIED: {line}", file=sys.stderr)
        print(f"{v.records} records from seq {v.first_seq}{' verified' if v.ok else ' before the first problem'}; "
              f"head {v.head} (keep it elsewhere: a rewritten log shows a different head)")
        return 0 if v.ok else 1
    if a.action == "show":
        since = _parse_time(a.since) if a.since else None
        for record in audit.show(a.folder, a.user, since):
            if a.json:
                print(json.dumps(record, ensure_ascii=False))
            else:
                details = {k: v for k, v in record.items() if k not in ("seq", "time", "event", "who", "prev")}
                print(f"{record['time']}  #{record['seq']}  {record['event']:<8} {record.get('who', '')}  "
                      f"{json.dumps(details, ensure_ascii=False)[:300]}")
        return 0
    report = audit.prune(a.folder, _parse_time(a.before), who=f"tbps audit prune ({getpass.getuser()})")
    print(f"pruned {report['removed_files']} files ({report['removed_records']} records) before {a.before}; "
          f"a prune record now anchors what remains")
    return 0


def _holders(sub, command: str, help: str, holder: str, file: str, fn) -> None:
    """`tbps keys` and `tbps accounts`: add, remove or list the NAMEs of a FILE, each with a role."""
    p = sub.add_parser(command, help=help, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("name", nargs="?", default=None, help=f"the {holder} (add, remove)")
    p.add_argument("--role", default="viewer", help="viewer or operator (add)")
    p.add_argument("--file", required=True, help=file)
    p.set_defaults(fn=lambda a: fn(_needs_name(a)))


def add_commands(sub) -> None:
    _holders(sub, "keys", "API keys by role for tbps serve --keys (viewer: search; operator: also ingest and erase)",
             "key's holder", "the keys file (made 0600; holds hashes, never keys)", cmd_keys)
    _holders(sub, "accounts", "the search page's users for tbps ui --accounts (scrypt-hashed passwords)", "user",
             "the accounts file (made 0600)", cmd_accounts)

    p = sub.add_parser("audit", help="verify, show or prune a server's audit trail (tbps serve --audit DIR)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["verify", "show", "prune"])
    p.add_argument("folder", help="the audit folder")
    p.add_argument("--user", default=None, help="show: only this key's (or page user's) records")
    p.add_argument("--since", default=None, help="show: from this ISO 8601 time")
    p.add_argument("--before", default=None, help="prune: drop whole files whose records are all older")
    p.add_argument("--json", action="store_true", help="show: one JSON record per line")
    p.set_defaults(fn=lambda a: cmd_audit(_needs_before(a)))


def _needs_name(a):
    if a.action in ("add", "remove") and not a.name:
        raise ValueError(f"{a.command} {a.action} needs a NAME")
    return a


def _needs_before(a):
    if a.action == "prune" and not a.before:
        raise ValueError("tbps audit prune needs --before ISO_TIME")
    return a
