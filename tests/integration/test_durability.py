"""Durability: SRV-23 (250 only after commit; nothing without 250) and
SRV-22a (spool full is a 4xx, and the session survives it)."""
import signal
import time

from mtadtest import message
from smtpraw import RawSMTP, data_bytes


def _open_transaction(mtad, sender, rcpt="rcpt@example.org"):
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo("durable.client.test").code == 250
    assert c.cmd("MAIL FROM:<%s>" % sender).code == 250
    assert c.cmd("RCPT TO:<%s>" % rcpt).code == 250
    assert c.cmd("DATA").code == 354
    return c


def test_srv23b_kill9_after_250_message_survives(mtad):
    """SRV-23(b): kill -9 right after the 250; the message is in the spool
    (mtaq works on the stopped spool) and still there after a restart."""
    c = _open_transaction(mtad, "durable@client.test")
    c.send(data_bytes(message("durable")))
    r = c.reply()
    mtad.kill9()
    assert r.code == 250 and r.qid, r
    c.close()

    q = mtad.queue()  # mtad is dead: mtaq reads the spool itself
    assert list(q) == [r.qid], q
    assert q[r.qid]["sender"] == "durable@client.test"

    mtad.start()
    q = mtad.queue()
    assert list(q) == [r.qid], q
    assert q[r.qid]["sender"] == "durable@client.test"
    assert mtad.cat(r.qid).endswith(message("durable"))


def test_srv23a_kill9_before_250_leaves_nothing(mtad):
    """SRV-23(a): mtad is stopped (SIGSTOP) before it can read the final
    dot, then killed: the client never sees a 250 and after a restart the
    spool holds nothing from that transaction."""
    # A committed message first, so we know the spool itself survives.
    c0 = _open_transaction(mtad, "before@client.test")
    c0.send(data_bytes(message("before")))
    first = c0.reply()
    assert first.code == 250, first
    c0.quit()

    c = _open_transaction(mtad, "lost@client.test")
    c.send(message("lost", body=("x" * 70 + "\r\n") * 50))
    time.sleep(0.3)
    mtad.signal(signal.SIGSTOP)
    try:
        c.send(b".\r\n")
        time.sleep(0.3)
    finally:
        mtad.kill9()
    got = c.pending(wait=2.0)
    assert b"250" not in got, "client got a reply from a killed mtad: %r" % got
    c.close()

    mtad.start()
    q = mtad.queue()
    assert list(q) == [first.qid], q
    assert all(m["sender"] != "lost@client.test" for m in q.values())


def test_srv22a_spool_full_452_session_continues(mtad_factory):
    """SRV-22(a): with a 1 MiB LMDB map a 2 MiB message gets 452 4.3.1 after
    the dot; the same session then sends a small message (250); after a
    restart mtaq lists only the small one."""
    mtad = mtad_factory({"spool.max_size": "1M"})
    c = RawSMTP(mtad.addr, mtad.port, timeout=30)
    assert c.greeting().code == 220
    assert c.ehlo("full.client.test").code == 250
    big = message("big", body=("y" * 998 + "\r\n") * 2100)
    assert len(big) > 2 * 1024 * 1024
    r = c.send_message("big@client.test", ["rcpt@example.org"], big)
    assert r.code == 452 and r.dsn == "4.3.1", r
    assert c.cmd("NOOP").code == 250
    r2 = c.send_message("small@client.test", ["rcpt@example.org"], message("small"))
    assert r2.code == 250 and r2.qid, r2
    c.quit()
    assert mtad.alive()

    mtad.restart()
    q = mtad.queue()
    assert list(q) == [r2.qid], q
    assert q[r2.qid]["sender"] == "small@client.test"
