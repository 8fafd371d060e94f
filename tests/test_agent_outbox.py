"""The durable outbox: real SQLite files, real child processes killed with SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeops.agent.outbox import DB_NAME, Outbox
from edgeops.errors import InputFileError, UsageError

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "test/v1/devices/d1/telemetry"


def window(seq: int, state: dict) -> bytes:
    return json.dumps({"seq": seq, "outbox": state}).encode()


def seqs(outbox: Outbox) -> list[int]:
    return [seq for seq, _, _ in outbox.pending(limit=100000)]


def test_append_pending_ack_and_reopen(tmp_path):
    with Outbox(tmp_path / "buf") as box:
        instance = box.instance
        assert len(instance) == 32 and int(instance, 16) >= 0
        assert [box.append(TOPIC, window) for _ in range(4)] == [1, 2, 3, 4]
        rows = box.pending(limit=2)
        assert [(s, t) for s, t, _ in rows] == [(1, TOPIC), (2, TOPIC)]
        assert json.loads(rows[1][2]) == {"seq": 2, "outbox": {"pending": 2, "dropped_total": 0}}
        assert [s for s, _, _ in box.pending(limit=10, after_seq=2)] == [3, 4]
        box.ack(2)
        box.ack(2)                       # idempotent
        box.ack(99)                      # unknown: fine
        assert seqs(box) == [1, 3, 4]
        assert box.stats() == {"pending": 3, "dropped_total": 0, "last_seq": 4}
    # a restart keeps the queue, the instance id and the counter
    with Outbox(tmp_path / "buf") as box:
        assert box.instance == instance
        assert seqs(box) == [1, 3, 4]
        box.ack_many([1, 3, 4])
        assert box.stats() == {"pending": 0, "dropped_total": 0, "last_seq": 4}
    # an emptied queue never hands out a used seq again
    with Outbox(tmp_path / "buf") as box:
        assert box.append(TOPIC, window) == 5
        assert json.loads(box.pending()[0][2])["outbox"] == {"pending": 1, "dropped_total": 0}


def test_bound_drops_oldest_and_counts_them(tmp_path):
    with Outbox(tmp_path, max_windows=5) as box:
        payloads = [json.loads(box.pending(limit=1, after_seq=box.append(TOPIC, window) - 1)[0][2])
                    for _ in range(8)]
        assert seqs(box) == [4, 5, 6, 7, 8]
        assert box.stats() == {"pending": 5, "dropped_total": 3, "last_seq": 8}
        # each payload reports the state after its own append and drop
        assert payloads[4]["outbox"] == {"pending": 5, "dropped_total": 0}
        assert payloads[7]["outbox"] == {"pending": 5, "dropped_total": 3}
    # the drop count is persisted; a lower bound on restart trims and counts too
    with Outbox(tmp_path, max_windows=2) as box:
        assert seqs(box) == [7, 8]
        assert box.stats() == {"pending": 2, "dropped_total": 6, "last_seq": 8}


def test_failed_build_stores_nothing_and_uses_no_seq(tmp_path):
    def broken(seq, state):
        raise RuntimeError("payload failed")

    with Outbox(tmp_path) as box:
        box.append(TOPIC, window)
        with pytest.raises(RuntimeError):
            box.append(TOPIC, broken)
        with pytest.raises(TypeError):
            box.append(TOPIC, lambda seq, state: "text, not bytes")
        assert box.append(TOPIC, window) == 2
        assert seqs(box) == [1, 2]


def test_threads_get_unique_consecutive_seqs(tmp_path):
    got: list[int] = []
    with Outbox(tmp_path) as box:
        def work():
            for _ in range(40):
                got.append(box.append(TOPIC, window))
                box.stats()
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == list(range(1, 161))
        assert seqs(box) == list(range(1, 161))


def test_second_agent_on_the_same_directory_is_refused(tmp_path):
    with Outbox(tmp_path / "buf"):
        with pytest.raises(UsageError, match="another agent uses BUFFER_DIR") as info:
            Outbox(tmp_path / "buf")
        assert info.value.hint
        code = ("import sys\nfrom edgeops.agent.outbox import Outbox\nfrom edgeops.errors import UsageError\n"
                "try:\n    Outbox(sys.argv[1])\nexcept UsageError as e:\n    print(e.message); sys.exit(2)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "buf")], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "another agent uses BUFFER_DIR" in proc.stdout
    # released on close
    with Outbox(tmp_path / "buf") as box:
        assert box.stats()["pending"] == 0


def test_corrupt_database_is_reported_and_kept(tmp_path):
    db = tmp_path / DB_NAME
    junk = b"this is not a database at all" * 200
    db.write_bytes(junk)
    with pytest.raises(InputFileError) as info:
        Outbox(tmp_path)
    assert str(db) in info.value.message
    assert "move" in info.value.hint and str(db) in info.value.hint
    assert db.read_bytes() == junk             # never deleted or rewritten
    # the lock was released: after moving the file aside the directory works
    db.rename(tmp_path / "outbox.bad")
    with Outbox(tmp_path) as box:
        assert box.append(TOPIC, window) == 1


def test_bad_bound_and_unusable_directory(tmp_path):
    with pytest.raises(UsageError):
        Outbox(tmp_path, max_windows=0)
    with pytest.raises(UsageError):
        Outbox(tmp_path, max_windows=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(InputFileError, match="buffer directory"):
        Outbox(blocker / "buf")


def test_database_uses_wal_and_full_sync(tmp_path):
    with Outbox(tmp_path) as box:
        box.append(TOPIC, window)
        assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL
    # the file is plain SQLite: another reader sees the committed window
    con = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert con.execute("SELECT seq FROM windows").fetchall() == [(1,)]
    finally:
        con.close()


CHILD = """
import json, sys
from edgeops.agent.outbox import Outbox
box = Outbox(sys.argv[1])
while True:
    seq = box.append("t", lambda s, st: json.dumps({"seq": s, "pad": "x" * 3000}).encode())
    print(seq, flush=True)   # printed only after the commit returned
"""


def test_sigkill_loses_no_committed_window(tmp_path):
    buf = tmp_path / "buf"
    with Outbox(buf) as box:                   # some history first: seq continues from it
        for _ in range(3):
            box.append("t", window)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(buf)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    committed: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(committed) < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed.append(int(line))
        assert len(committed) >= 200, proc.stderr.read() if proc.poll() is not None else "too slow"
        os.kill(proc.pid, signal.SIGKILL)   # in the middle of its work: it keeps appending until now
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert committed[0] == 4
    with Outbox(buf) as box:
        stored = seqs(box)
        last = box.stats()["last_seq"]
        assert set(committed) <= set(stored)             # every committed window is there
        assert stored == list(range(1, last + 1))        # no gap, no half-written row
        assert last >= committed[-1]
        for seq, _, payload in box.pending(limit=100000, after_seq=3):
            assert json.loads(payload)["seq"] == seq
        assert box.append("t", window) == last + 1       # the counter continues
