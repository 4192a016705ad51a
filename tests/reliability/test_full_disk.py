"""Full disk says 452 (issue 9 item 6; SRV-22).  The spool lives on a
2 MiB tmpfs: once it is full every refusal is 452 4.3.1 (insufficient
system storage), never 451 4.3.0, and every message answered 250 is in
the spool afterwards.  The full LMDB map (spool.max_size reached) is
tests/integration/test_durability.py::test_srv22a_spool_full_452_session_continues;
both run in `make test`."""
import os
import subprocess
import tempfile

import pytest

from mtadtest import message
from smtpraw import RawSMTP


@pytest.fixture
def small_fs():
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tempfile.mkdtemp(prefix="mtit-fullfs-", dir="/tmp")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0711",
                        "tmpfs", d], stderr=subprocess.PIPE)
    if p.returncode != 0:
        os.rmdir(d)
        pytest.skip("cannot mount a tmpfs: %s" % p.stderr.decode().strip())
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d])
        os.rmdir(d)


def test_full_filesystem_452_and_nothing_acknowledged_lost(mtad_factory, small_fs):
    m = mtad_factory({"spool.dir": os.path.join(small_fs, "spool")})
    accepted, refused, sent = [], [], {}
    body = ("f" * 76 + "\r\n") * 900  # ~70 KB: bodies spill to tmp/ too
    for i in range(60):
        c = RawSMTP(m.addr, m.port, timeout=30)
        assert c.greeting().code == 220
        assert c.ehlo("full.client.test").code == 250
        r = c.send_message("f%d@client.test" % i, ["rcpt@example.org"],
                           message("full %d" % i, body=body))
        if r.code == 250:
            assert r.qid, r
            accepted.append(r.qid)
            sent[r.qid] = i
        else:
            refused.append(r)
        c.quit()
    print("full disk: %d accepted, %d refused; commit_failed errors %r" % (
        len(accepted), len(refused),
        sorted({e["error"] for e in m.events("commit_failed")})))
    assert accepted, "nothing fitted on a 2 MiB file system"
    assert len(refused) >= 20, "the file system never filled: %d accepted" % len(accepted)
    wrong = [r for r in refused if (r.code, r.dsn) != (452, "4.3.1")]
    assert not wrong, "refusals other than 452 4.3.1 on a full disk: %r" % wrong[:5]
    fails = m.events("commit_failed")
    assert fails and all(e["error"] in ("ENOSPC", "EDQUOT") for e in fails), \
        [e["_line"] for e in fails if e["error"] not in ("ENOSPC", "EDQUOT")][:5]
    assert m.alive()

    # every 250 is on disk, in the spool, after a restart
    m.restart()
    q = m.queue()
    missing = set(accepted) - set(q)
    assert not missing, "acknowledged but gone: %r" % sorted(missing)
    for qid, i in list(sent.items())[-3:]:
        assert m.cat(qid).endswith(message("full %d" % i, body=body)), qid
