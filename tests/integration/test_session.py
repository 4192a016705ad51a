"""Driver-level session behaviour the engine's unit tests cannot see:
pipelining through the real socket (PIPE-01/02), TLS state reset (TLS-03,
TLS-05), data_timeout, max_recipients (LIM-05)."""
import time

from mtadtest import message
from smtpraw import RawSMTP, data_bytes, unverified_context


def test_pipe01_pipe02_pipelined_replies_in_order(mtad):
    """PIPE-02: 200 commands in one write get 200 replies (no input lost
    while the output buffer fills); PIPE-01: a pipelined transaction's
    replies come in command order and the message is queued."""
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    c.send(b"NOOP\r\n" * 200)
    codes = [c.reply().code for _ in range(200)]
    assert codes == [250] * 200
    assert c.pending(0.3) == b""
    c.send(b"MAIL FROM:<pipe@client.test>\r\nRCPT TO:<a@example.org>\r\n"
           b"RCPT TO:<bad@example.org\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    codes = [c.reply().code for _ in range(5)]
    assert codes[0] == 250 and codes[1] == 250 and 500 <= codes[2] < 600, codes
    assert codes[3:] == [250, 354], codes
    c.send(data_bytes(message("pipelined")))
    r = c.reply()
    assert r.code == 250 and r.qid, r
    c.quit()
    q = mtad.queue()
    assert sorted(x["addr"] for x in q[r.qid]["recipients"]) == ["a@example.org", "b@example.org"]


def test_tls03_tls05_state_reset_after_starttls(mtad):
    """TLS-05: after the handshake the session is in its initial state
    (MAIL without a new EHLO -> 503); TLS-03: a second STARTTLS inside TLS
    -> 503, session intact.  STARTTLS inside a transaction -> 503 5.5.1."""
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    # (choice, pinned) STARTTLS inside an open transaction is refused.
    assert c.cmd("MAIL FROM:<pre-tls@client.test>").code == 250
    r = c.cmd("STARTTLS")
    assert r.code == 503 and r.dsn == "5.5.1", r
    assert c.cmd("RSET").code == 250
    r = c.cmd("STARTTLS")
    assert r.code == 220, r
    c.sock = unverified_context().wrap_socket(c.sock)
    r = c.cmd("MAIL FROM:<post-tls@client.test>")
    assert r.code == 503, "TLS-05: EHLO not forgotten after STARTTLS: %r" % r
    assert c.ehlo().code == 250
    r = c.cmd("STARTTLS")
    assert r.code == 503, r
    r = c.send_message("post-tls@client.test", ["a@example.org"], message("tls"))
    assert r.code == 250, r
    c.quit()
    assert [m["sender"] for m in mtad.queue().values()] == ["post-tls@client.test"]


def test_data_timeout_421_nothing_stored(mtad_factory):
    """server.data_timeout = 2s: a client that stops in the middle of DATA
    gets 421 4.4.2 and the close; the partial message is not stored."""
    mtad = mtad_factory({"server.data_timeout": "2s", "server.command_timeout": "30s"})
    c = RawSMTP(mtad.addr, mtad.port, timeout=15)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    assert c.cmd("MAIL FROM:<slow@client.test>").code == 250
    assert c.cmd("RCPT TO:<a@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: slow\r\n\r\npartial")
    t0 = time.monotonic()
    r = c.reply()
    assert r.code == 421 and r.dsn == "4.4.2", r
    assert 1.5 <= time.monotonic() - t0 <= 8
    assert c.wait_closed(5)
    assert mtad.queue() == {}


def test_lim05_max_recipients(mtad_factory):
    """LIM-05: server.max_recipients = 100: 100 RCPTs get 250, the 101st
    452 4.5.3, and the message goes to the 100 accepted."""
    mtad = mtad_factory({"server.max_recipients": 100})
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    assert c.cmd("MAIL FROM:<many@client.test>").code == 250
    c.send(b"".join(b"RCPT TO:<r%03d@example.org>\r\n" % i for i in range(101)))
    replies = [c.reply() for _ in range(101)]
    assert [r.code for r in replies[:100]] == [250] * 100
    assert replies[100].code == 452 and replies[100].dsn == "4.5.3", replies[100]
    assert c.cmd("DATA").code == 354
    c.send(data_bytes(message("many")))
    r = c.reply()
    assert r.code == 250, r
    c.quit()
    m = mtad.queue()[r.qid]
    assert len(m["recipients"]) == 100
    assert "r100@example.org" not in [x["addr"] for x in m["recipients"]]
