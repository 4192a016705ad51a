"""Damaged spools (issue 9 item 3).  data.mdb is checked against its own
meta pages before it is mapped: a truncated file is refused (never a
SIGBUS, never "schema version mismatch"), an emptied file is refused and
never replaced by a new spool, and the daemon and the tools say what is
wrong and what to do.  Damage found at run time is logged loudly
(event=spool_corrupt, level error) and the daemon keeps running."""
import os
import random
import shutil
import signal
import struct
import time

from mtadtest import MTACTL, MTAQ, message
from smtpraw import RawSMTP

NMSG = 50
SEED = 9301  # random bytes over the page in test (c)


def _fill(m, n=NMSG):
    c = RawSMTP(m.addr, m.port, timeout=30)
    assert c.greeting().code == 220
    assert c.ehlo("damage.client.test").code == 250
    qids = []
    for i in range(n):
        r = c.send_message("s%d@client.test" % i, ["rcpt@example.org"],
                           message("m%d" % i, body=(("z%d " % i) * 20 + "\r\n") * 40))
        assert r.code == 250 and r.qid, r
        qids.append(r.qid)
    c.quit()
    return qids


def _tool(m, argv):
    return m.run_tool(argv, check=False)


def _start_fails(m):
    """Starts mtad, expects exit 1 before ready; returns its log."""
    m.start(wait_ready=False)
    try:
        rc = m.proc.wait(15)
    except Exception:
        raise AssertionError("mtad kept running on a damaged spool:\n" + m.log_tail())
    m.exit_codes.append(rc)
    log = m.log_text(since_start=True)
    assert rc == 1, "exit %r (want 1, not a signal)\n%s" % (rc, log)
    assert not m.events("ready", since_start=True), log
    return log


def _no_signal(p, what):
    assert p.returncode >= 0, "%s died of signal %d" % (what, -p.returncode)
    assert p.returncode == 1, "%s exit %d: %r" % (what, p.returncode, p.stderr)
    err = p.stderr.decode("utf-8", "replace")
    assert "Bad file descriptor" not in err, err
    assert "schema version mismatch" not in err, err
    return err


def test_truncated_and_emptied_spool_refused(mtad_factory):
    m = mtad_factory({"log.level": "info"})
    qids = _fill(m)
    assert m.stop() == 0
    data = os.path.join(m.spool, "data.mdb")
    size = os.path.getsize(data)
    assert size > 139 * 1024, size
    keep = os.path.join(m.dir, "data.mdb.backup")
    shutil.copyfile(data, keep)
    qid = qids[0]

    # (a) + (d): truncated
    os.truncate(data, 40960)
    for argv in ([MTAQ, "-c", m.conf, "--json"],
                 [MTACTL, "-c", m.conf, "show", qid],
                 [MTACTL, "-c", m.conf, "cat", qid]):
        err = _no_signal(_tool(m, argv), os.path.basename(argv[0]))
        assert "truncated" in err and "backup" in err, err
    log = _start_fails(m)
    assert "truncated" in log and "mdb_copy" in log, log
    assert "schema version mismatch" not in log, log
    ev = m.events("spool_open_failed", since_start=True)
    assert ev and ev[0]["error"] == "MTA_ECORRUPT", log
    assert os.path.getsize(data) == 40960  # nothing rewritten

    # (b): emptied; must not become a new, empty spool
    os.truncate(data, 0)
    for argv in ([MTAQ, "-c", m.conf, "--json"],
                 [MTACTL, "-c", m.conf, "show", qid]):
        err = _no_signal(_tool(m, argv), os.path.basename(argv[0]))
        assert "empty" in err, err
    log = _start_fails(m)
    assert "is empty (0 bytes)" in log and "Restore data.mdb" in log, log
    assert os.path.getsize(data) == 0

    # restored from the backup: every message is back
    shutil.copyfile(keep, data)
    m.start()
    assert set(m.queue()) == set(qids)


def _named_db_roots(path):
    """{name: root page} of the named databases, read from the main DB
    (a single leaf page in a spool this small).  LMDB 0.9 layout, 64-bit."""
    with open(path, "rb") as f:
        raw = f.read()
    psize = struct.unpack_from("<I", raw, 16 + 24)[0]
    metas = []
    for i in range(2):
        base = i * psize + 16
        last_pg, txnid = struct.unpack_from("<QQ", raw, base + 120)
        main_root = struct.unpack_from("<Q", raw, base + 24 + 48 + 40)[0]
        metas.append((txnid, main_root))
    main_root = max(metas)[1]
    page = raw[main_root * psize:(main_root + 1) * psize]
    flags, lower = struct.unpack_from("<HH", page, 10)
    assert flags & 0x02, "main DB root is not a leaf"
    roots = {}
    for i in range((lower - 16) // 2):
        off = struct.unpack_from("<H", page, 16 + 2 * i)[0]
        dsize, _hi, nflags, ksize = struct.unpack_from("<HHHH", page, off)
        key = page[off + 8:off + 8 + ksize].decode()
        if nflags & 0x02:  # F_SUBDATA: an MDB_db record follows
            roots[key] = struct.unpack_from("<Q", page, off + 8 + ksize + 40)[0]
    return psize, roots


def test_random_bytes_over_a_page_detected_at_run_time(mtad_factory):
    """(c): random bytes (seeded) over the root page of the messages
    database, with the page type bits cleared so that LMDB recognises the
    page as garbage (it has no checksums: random bytes that happen to look
    like a branch page can make it read outside the file, a SIGBUS no
    caller can catch; see docs/reliability.md).  The meta pages are
    intact, so mtad starts; the first operations that reach the page fail.  mtad must say so at error level (event=spool_corrupt),
    keep running, refuse mail with a 4xx (never 250 into a broken tree),
    and the tools must not crash."""
    m = mtad_factory()
    _fill(m, 20)
    assert m.stop() == 0
    data = os.path.join(m.spool, "data.mdb")
    psize, roots = _named_db_roots(data)
    assert "messages" in roots and roots["messages"] > 1, roots
    rnd = random.Random(SEED)
    with open(data, "r+b") as f:
        f.seek(roots["messages"] * psize)
        page = bytearray(rnd.randrange(256) for _ in range(psize))
        struct.pack_into("<H", page, 10, 0)  # mp_flags: no P_BRANCH/P_LEAF
        f.write(page)

    m.start()
    c = RawSMTP(m.addr, m.port)
    assert c.greeting().code == 220
    assert c.ehlo("damage.client.test").code == 250
    r = c.send_message("after@client.test", ["rcpt@example.org"], message("after"))
    assert 400 <= r.code < 500, r
    c.quit()
    ev = m.wait_event("spool_corrupt", timeout=10)
    assert ev, m.log_tail()
    assert ev[0].get("level") == "error", ev[0]["_line"]
    assert "mdb_copy" in ev[0].get("action", ""), ev[0]["_line"]
    assert m.alive()
    p = _tool(m, [MTAQ, "-c", m.conf, "--json"])
    assert p.returncode >= 0, "mtaq died of signal %d" % -p.returncode


def test_sigbus_from_the_map_is_reported_as_spool_damage(mtad_factory):
    """LMDB has no page checksums: a damaged page can send it past the end
    of data.mdb, a SIGBUS no caller can catch.  mtad then says, in its log,
    that the spool is damaged and what to do (event=spool_corrupt
    what=sigbus), and dies of the signal (no silent 'Bus error').  The
    signal is sent by hand here: the wiring is what is tested."""
    m = mtad_factory()
    _fill(m, 3)
    m.signal(signal.SIGBUS)
    rc = m.proc.wait(10)
    assert rc == -signal.SIGBUS, rc
    log = m.log_text()
    assert "event=spool_corrupt what=sigbus dir=%s" % m.spool in log, log[-2000:]
    assert "restore data.mdb from a backup" in log
