"""Framing: SIZE-01/02 and LIM-02, SMUG-01..04 and SMUG-07, hostile input.

Message size is taken to be the client's DATA content after dot-unstuffing
(without the terminating ".\\r\\n" and without our Received header).
"""
import os
import random
import socket
import time

import pytest

from mtadtest import message, split_received
from smtpraw import RawSMTP, data_bytes

LIMIT = 10000


def _msg_of_size(n):
    head = b"From: <s@client.test>\r\nSubject: size\r\n\r\n"
    body = b""
    while len(head) + len(body) + 80 <= n:
        body += b"a" * 78 + b"\r\n"
    rest = n - len(head) - len(body)
    assert rest >= 2
    body += b"b" * (rest - 2) + b"\r\n"
    m = head + body
    assert len(m) == n
    return m


def _session(mtad, helo="framing.client.test", **kw):
    c = RawSMTP(mtad.addr, mtad.port, **kw)
    assert c.greeting().code == 220
    assert c.ehlo(helo).code == 250
    return c


def test_size01_size02_limits(mtad_factory):
    """SIZE-01: EHLO advertises SIZE <max>; SIZE=max+1 at MAIL -> 552 5.3.4,
    SIZE=max -> 250.  SIZE-02: a message of exactly max bytes is accepted
    and stored byte for byte; max+1 bytes -> 552 5.3.4 after the dot, the
    session stays in sync, nothing of it is stored."""
    mtad = mtad_factory({"server.max_message_size": LIMIT})
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    e = c.ehlo("size.client.test")
    assert "SIZE %d" % LIMIT in [l[4:] for l in e.lines], e

    r = c.cmd("MAIL FROM:<declared@client.test> SIZE=%d" % (LIMIT + 1))
    assert r.code == 552 and r.dsn == "5.3.4", r
    assert c.cmd("RCPT TO:<x@example.org>").code == 503  # no transaction open
    r = c.cmd("MAIL FROM:<declared-ok@client.test> SIZE=%d" % LIMIT)
    assert r.code == 250, r
    assert c.cmd("RSET").code == 250

    exact = _msg_of_size(LIMIT)
    r = c.send_message("exact@client.test", ["x@example.org"], exact)
    assert r.code == 250 and r.qid, r

    over = _msg_of_size(LIMIT + 1)
    r2 = c.send_message("over@client.test", ["x@example.org"], over)
    assert r2.code == 552 and r2.dsn == "5.3.4", r2
    assert c.cmd("NOOP").code == 250
    assert c.pending(0.3) == b""
    c.quit()

    q = mtad.queue()
    assert list(q) == [r.qid], q
    _, rest = split_received(mtad.cat(r.qid))
    assert rest == exact


def _ehlo_mail_rcpt_data(c, sender="clean@client.test"):
    assert c.cmd("MAIL FROM:<%s>" % sender).code == 250
    assert c.cmd("RCPT TO:<rcpt@example.org>").code == 250
    assert c.cmd("DATA").code == 354


SMUGGLED = (b"MAIL FROM:<evil@smuggler.test>\r\nRCPT TO:<victim@example.org>\r\n"
            b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")
SMUG_CASES = {
    "SMUG-01 LF.LF": b"Subject: a\r\n\r\nx\n.\n" + SMUGGLED,
    "SMUG-02 LF.CRLF": b"Subject: a\r\n\r\nx\n.\r\n" + SMUGGLED,
    "SMUG-03 CRLF.LF": b"Subject: a\r\n\r\nx\r\n.\n" + SMUGGLED,
    "SMUG-04 CR.CR": b"Subject: a\r\n\r\nx\r.\r" + SMUGGLED,
    "SMUG-04 CRLF.CR": b"Subject: a\r\n\r\nx\r\n.\r" + SMUGGLED,
    "NUL in data": b"Subject: a\r\n\r\nx\x00y\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("case", list(SMUG_CASES))
def test_smuggling_rejected_one_reply(mtad, case):
    """SMUG-01..04: a non-standard end of data followed by a smuggled
    transaction.  Exactly one reply (550 5.6.0) at the real <CRLF>.<CRLF>,
    no MAIL executed from the body, nothing queued, and the session is
    still usable: a clean message afterwards is accepted."""
    c = _session(mtad)
    _ehlo_mail_rcpt_data(c, "honest@client.test")
    c.send(SMUG_CASES[case])
    r = c.reply()
    assert r.code == 550 and r.dsn == "5.6.0", r
    extra = c.pending(0.5)
    assert extra == b"", "more than one reply to the end of data: %r" % extra
    # If the smuggled MAIL had run, a transaction would be open now.
    r = c.cmd("RCPT TO:<probe@example.org>")
    assert r.code == 503, "smuggled MAIL FROM executed: %r" % r
    assert mtad.queue() == {}
    ok = c.send_message("after@client.test", ["rcpt@example.org"], message("after"))
    assert ok.code == 250 and ok.qid, ok
    c.quit()
    q = mtad.queue()
    assert list(q) == [ok.qid], q
    assert q[ok.qid]["sender"] == "after@client.test"
    assert b"evil" not in mtad.cat(ok.qid)
    assert not [e for e in mtad.events("accept") if "smuggler" in e["_line"]]


def test_smug07_dot_unstuffing(mtad):
    """SMUG-07: '..foo' is stored as '.foo', '...' as '..'; the lone dot
    ends the data."""
    c = _session(mtad)
    _ehlo_mail_rcpt_data(c, "dots@client.test")
    c.send(b"Subject: dots\r\n\r\n..foo\r\n...\r\n. \r\nbar\r\n.\r\n")
    r = c.reply()
    assert r.code == 250 and r.qid, r
    assert c.cmd("NOOP").code == 250
    c.quit()
    _, rest = split_received(mtad.cat(r.qid))
    assert rest == b"Subject: dots\r\n\r\n.foo\r\n..\r\n \r\nbar\r\n", rest


def _assert_healthy(mtad):
    assert mtad.alive(), "mtad died; log:\n" + mtad.log_tail()
    c = _session(mtad, helo="after.hostile.test")
    r = c.send_message("after-hostile@client.test", ["rcpt@example.org"], message("ok"))
    assert r.code == 250 and r.qid, r
    c.quit()
    assert r.qid in mtad.queue()


def test_hostile_commands(mtad):
    """NUL in a command and a bare LF in a command line (SMUG-06): 500
    5.5.2, nothing after the LF runs; a 10 KB line and a 2049-octet line
    (LIM-02: 500 5.5.2, session kept); 64-octet local part and 253-octet
    domain accepted (LIM-04); unknown commands (SRV-10)."""
    c = _session(mtad)
    r = c.cmd("NO\x00OP")
    assert r.code == 500 and r.dsn == "5.5.2", r
    r = c.cmd("MAIL FROM:<nul\x00@client.test>")
    assert r.code == 500 and r.dsn == "5.5.2", r
    r = c.cmd("EHLO a\nMAIL FROM:<lf@client.test>")  # SMUG-06
    assert r.code == 500 and r.dsn == "5.5.2", r
    assert c.cmd("RCPT TO:<x@example.org>").code == 503  # no MAIL ran
    r = c.cmd("NOOP " + "x" * 10240)
    assert r.code == 500 and r.dsn == "5.5.2", r
    r = c.cmd("NOOP " + "y" * (2049 - 7))  # 2049 octets with CRLF
    assert r.code == 500 and r.dsn == "5.5.2", r
    assert c.cmd("NOOP").code == 250
    assert c.cmd("MAIL FROM:<long@client.test>").code == 250
    domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 octets
    r = c.cmd("RCPT TO:<%s@%s>" % ("r" * 64, domain))  # LIM-04 boundaries
    assert r.code == 250, r
    for _ in range(3):
        r = c.cmd("FOO bar")
        assert r.code == 500 and r.dsn == "5.5.2", r
    assert c.cmd("RSET").code == 250
    c.quit()
    _assert_healthy(mtad)


def test_hostile_junk_garbage_disconnect(mtad):
    """100 pipelined junk lines (each 500, or the server gives up with
    421 and closes), binary garbage, an abrupt disconnect mid-DATA: then a
    new session delivers a normal message and mtad is alive; nothing of the
    aborted message is stored."""
    c = _session(mtad)
    c.send(b"".join(b"JUNK %d \x01\x7f\xff\r\n" % i for i in range(100)))
    codes = []
    try:
        while len(codes) < 100:
            r = c.reply()
            codes.append(r.code)
            if r.code == 421:
                break
    except EOFError:
        pass
    assert codes and all(x == 500 for x in codes[:-1]) and codes[-1] in (500, 421), codes
    assert len(codes) == 100 or codes[-1] == 421, codes
    c.close()

    rnd = random.Random(1234)
    g = RawSMTP(mtad.addr, mtad.port)
    g.greeting()
    g.send(bytes(rnd.getrandbits(8) for _ in range(64 * 1024)))
    g.pending(0.5)
    g.close()

    g = RawSMTP(mtad.addr, mtad.port)
    g.send(os.urandom(8192))  # before even reading the greeting
    g.sock.shutdown(socket.SHUT_WR)
    g.wait_closed(5)
    g.close()

    d = _session(mtad)
    _ehlo_mail_rcpt_data(d, "aborted@client.test")
    d.send(message("aborted", body="partial line without end"))
    time.sleep(0.2)
    d.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    d.close()  # RST

    e = _session(mtad)
    _ehlo_mail_rcpt_data(e, "aborted2@client.test")
    e.send(message("aborted2"))
    e.close()  # FIN mid-DATA

    time.sleep(0.3)
    _assert_healthy(mtad)
    senders = [m["sender"] for m in mtad.queue().values()]
    assert senders == ["after-hostile@client.test"], senders
