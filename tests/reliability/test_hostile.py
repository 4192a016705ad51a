"""Hostile clients (issue 9): the backscatter relay, slow clients, session
slots, the timeout in force after 250 and after 354, long lines, and config
checks.  Every test asserts what arrived where, which reply code was given
and what the spool holds."""
import os
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lab"))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "lib"))

from mtadtest import MTAD, alloc_addr, clean_env, message  # noqa: E402
from smtpraw import RawSMTP  # noqa: E402
from sinks import sink_lab  # noqa: E402,F401  (fixture)

# No DNS in these tests: the relayhost is an IP literal; the DNSSEC
# self-test fails at once against a closed port.
NODNS = {"dns.resolver": "127.0.0.1:9", "dns.timeout": "1s"}


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def relay_to(sink):
    return "[%s]:%d" % (sink.addr, sink.port)


# ---------------------------------------------------------------------------
# 1. backscatter

def test_srv22_outsider_refused_at_greeting_without_postmaster(mtad_factory):
    """SRV-22(b), RFC 5321 3.1: without server.postmaster a client outside
    relay_networks can reach nothing, so it gets 554 5.7.1 as the greeting,
    503 5.7.1 to every command but QUIT, 221 to QUIT; nothing is queued.
    A client inside is served as usual."""
    mtad = mtad_factory({"server.relay_networks": "127.0.0.1/32"})
    outside = alloc_addr()
    c = RawSMTP(mtad.addr, mtad.port, source=outside)
    g = c.greeting()
    assert g.code == 554 and g.dsn == "5.7.1", g
    assert "Relay access denied for [%s]" % outside in g.text, g
    r = c.cmd("EHLO outsider.test")
    assert r.code == 503 and r.dsn == "5.7.1", r
    r = c.cmd("MAIL FROM:<victim@example.net>")
    assert r.code == 503, r
    r = c.cmd("QUIT")
    assert r.code == 221, r
    assert c.wait_closed(5)
    assert mtad.queue() == {}

    inside = RawSMTP(mtad.addr, mtad.port)
    assert inside.greeting().code == 220
    assert inside.ehlo("insider.test").code == 250
    ok = inside.send_message("app@insider.test", ["bob@example.org"], message("in"))
    assert ok.code == 250, ok
    inside.quit()
    assert list(mtad.queue()) == [ok.qid]


def _postmaster_session(mtad, source, rcpt_params=""):
    """The attack of issue 9: the victim as sender with RET=FULL, the victim
    as recipient (refused), Postmaster (accepted).  Returns the queue id."""
    c = RawSMTP(mtad.addr, mtad.port, source=source)
    assert c.greeting().code == 220
    assert c.ehlo("attacker.test").code == 250
    assert c.cmd("MAIL FROM:<victim@example.net> RET=FULL ENVID=x1").code == 250
    r = c.cmd("RCPT TO:<victim@example.net>")
    assert r.code == 554 and r.dsn == "5.7.1", r
    r = c.cmd("RCPT TO:<Postmaster>" + rcpt_params)
    assert r.code == 250, r
    assert c.cmd("DATA").code == 354
    c.send(b"From: <victim@example.net>\r\nSubject: spam payload\r\n\r\n"
           b"buy now\r\n.\r\n")
    r = c.reply()
    assert r.code == 250, r
    c.quit()
    return r.qid


def test_backscatter_postmaster_gets_it_with_null_sender(mtad_factory, sink_lab):
    """Issue 9.1: with server.postmaster set, an outsider reaches only the
    postmaster address; the message leaves with MAIL FROM:<> and no DSN
    parameters, so neither a success DSN (NOTIFY=SUCCESS) nor any bounce
    can reach the sender it claimed.  The claimed sender is logged."""
    sink = sink_lab.aio(dsn=True)
    mtad = mtad_factory(dict(NODNS, **{
        "server.relay_networks": "127.0.0.1/32",
        "server.postmaster": "pm@site.test",
        "delivery.relayhost": relay_to(sink)}))
    outside = alloc_addr()
    qid = _postmaster_session(mtad, outside, " NOTIFY=SUCCESS,FAILURE")
    (rec,) = sink.wait_messages(1, timeout=20)
    assert rec["mail_from"] in ("", "<>"), rec  # aiosmtpd says "<>"
    assert rec["rcpt_tos"] == ["pm@site.test"], rec
    assert b"spam payload" in rec["data"]
    wait_until(lambda: mtad.events("delivery", qid=qid, status="sent"), 20,
               "delivery sent")
    wait_until(lambda: qid not in mtad.queue(), 10, "qid to leave the spool")
    time.sleep(1.0)
    assert mtad.queue() == {}, "a DSN was queued: %r" % mtad.queue()
    assert mtad.events("dsn") == []
    assert len(sink.messages()) == 1
    (u,) = mtad.events("untrusted_message", qid=qid)
    assert u["claimed_from"] == "<victim@example.net>" and u["sender"] == "<>", u


def test_backscatter_failed_postmaster_delivery_bounces_to_nobody(mtad_factory, sink_lab):
    """Issue 9.1: when the postmaster address itself refuses the message,
    it is bounced with no DSN at all (null sender): nothing is queued and
    nothing reaches the claimed sender."""
    sink = sink_lab.aio(rcpt_replies={"pm@site.test": "550 5.1.1 no such user"})
    mtad = mtad_factory(dict(NODNS, **{
        "server.relay_networks": "127.0.0.1/32",
        "server.postmaster": "pm@site.test",
        "delivery.relayhost": relay_to(sink)}))
    qid = _postmaster_session(mtad, alloc_addr())
    wait_until(lambda: mtad.events("delivery", qid=qid, status="bounced"), 20,
               "delivery bounced")
    wait_until(lambda: qid not in mtad.queue(), 10, "qid to leave the spool")
    time.sleep(1.0)
    assert mtad.queue() == {}
    assert mtad.events("dsn") == []
    assert sink.messages() == []


# ---------------------------------------------------------------------------
# 4, 5. slow clients and the right timeout

def test_whole_command_deadline_one_byte_at_a_time(mtad_factory):
    """Issue 9.4: one byte every 0.4 s keeps no command open past
    server.command_timeout (2 s): the session gets 421 4.4.2 and is closed
    long before the 12 s the trickle would take."""
    mtad = mtad_factory({"server.command_timeout": "2s"})
    c = RawSMTP(mtad.addr, mtad.port, timeout=15)
    assert c.greeting().code == 220
    closed, data = False, b""
    for b in b"EHLO slowloris.example.test.and.a.long.name":
        try:
            c.send(bytes([b]))
        except OSError:
            closed = True
            break
        time.sleep(0.4)
        data += c.pending(0)
        if data or c.eof:
            break
    data += c.pending(1.0)
    assert b"421 4.4.2" in data, (closed, data)
    assert c.eof or c.wait_closed(5)
    assert mtad.events("disconnect", reason="timeout")


def test_whole_message_deadline_inside_data(mtad_factory):
    """Issue 9.4: a body trickled a line every 0.3 s (never idle for
    data_timeout) is cut at server.message_timeout (3 s) with 421 4.4.2;
    nothing is stored."""
    mtad = mtad_factory({"server.message_timeout": "3s",
                         "server.data_timeout": "60s"})
    c = RawSMTP(mtad.addr, mtad.port, timeout=15)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    got = b""
    for i in range(40):
        try:
            c.send(b"line %d\r\n" % i)
        except OSError:
            break
        time.sleep(0.3)
        got += c.pending(0)
        if c.eof or b"421" in got:
            break
    got += c.buf + c.pending(1.0)
    assert b"421 4.4.2" in got, got
    assert mtad.queue() == {}


def test_command_timeout_applies_after_250_not_data_timeout(mtad_factory):
    """Issue 9.5: after a message's 250 the command timeout (2 s) applies,
    not the data timeout (60 s): an idle client is closed with 421 4.4.2
    within the 10 s this test waits."""
    mtad = mtad_factory({"server.command_timeout": "2s",
                         "server.data_timeout": "60s"})
    c = RawSMTP(mtad.addr, mtad.port, timeout=15)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    r = c.send_message("a@client.test", ["b@example.org"], message("t"))
    assert r.code == 250, r
    assert c.wait_closed(10), "still open 10 s after the 250"
    assert b"421 4.4.2" in c.buf, c.buf
    assert list(mtad.queue()) == [r.qid]


def test_data_timeout_applies_after_354_not_command_timeout(mtad_factory):
    """Issue 9.5: after 354 the data timeout applies, not the command
    timeout: a client silent for 4 s after 354 (command_timeout 2 s,
    data_timeout 60 s) still gets its message accepted."""
    mtad = mtad_factory({"server.command_timeout": "2s",
                         "server.data_timeout": "60s"})
    c = RawSMTP(mtad.addr, mtad.port, timeout=15)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    time.sleep(4)
    assert c.pending(0) == b"" and not c.eof
    c.send(b"Subject: late\r\n\r\nbody\r\n.\r\n")
    r = c.reply()
    assert r.code == 250, r
    assert list(mtad.queue()) == [r.qid]


# ---------------------------------------------------------------------------
# 4. session slots

def test_max_sessions_per_client(mtad_factory):
    """Issue 9.4: server.max_sessions_per_client = 3: a fourth session from
    the same address gets 421 4.7.0; another address is still served."""
    mtad = mtad_factory({"server.max_sessions_per_client": "3"})
    src = alloc_addr()
    held = [RawSMTP(mtad.addr, mtad.port, source=src) for _ in range(3)]
    for h in held:
        assert h.greeting().code == 220
    extra = RawSMTP(mtad.addr, mtad.port, source=src)
    r = extra.greeting()
    assert r.code == 421 and r.dsn == "4.7.0", r
    assert "from your address" in r.text, r
    assert extra.wait_closed(5)
    other = RawSMTP(mtad.addr, mtad.port, source=alloc_addr())
    assert other.greeting().code == 220
    for h in held + [other]:
        h.quit()


def test_flood_from_outside_leaves_slots_for_relay_clients(mtad_factory):
    """Issue 9.4: 500 connections from 50 addresses outside relay_networks
    (max_sessions 100, 20 per client) take no slot a relay client needs:
    they are refused at the greeting or hit their share (a quarter of
    max_sessions), and a client inside relay_networks still gets 220 and
    delivers a message while they are all held open."""
    mtad = mtad_factory({"server.relay_networks": "127.0.0.1/32",
                         "server.max_sessions": "100",
                         "server.max_sessions_per_client": "20"})
    outsiders = [alloc_addr() for _ in range(50)]
    held, codes = [], {}
    for i in range(500):
        s = socket.create_connection((mtad.addr, mtad.port), timeout=10,
                                     source_address=(outsiders[i % 50], 0))
        held.append(s)
    for s in held:
        line = b""
        try:
            while not line.endswith(b"\r\n"):
                d = s.recv(512)
                if not d:
                    break
                line += d
        except socket.timeout:
            pass
        codes[line[:3]] = codes.get(line[:3], 0) + 1
    assert set(codes) <= {b"554", b"421"}, codes
    inside = RawSMTP(mtad.addr, mtad.port)
    assert inside.greeting().code == 220
    assert inside.ehlo("app.test").code == 250
    ok = inside.send_message("app@client.test", ["bob@example.org"], message("ok"))
    assert ok.code == 250, ok
    inside.quit()
    for s in held:
        s.close()
    assert list(mtad.queue()) == [ok.qid]
    assert mtad.alive()


# ---------------------------------------------------------------------------
# 9. long lines

def test_lim01_long_line_refused_at_acceptance(mtad_factory):
    """Issue 9.9, LIM-01 (choice): a message with a 999-octet line is
    refused after the end of data with 550 5.6.0 naming RFC 5322; nothing
    is stored and the session goes on."""
    mtad = mtad_factory()
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    r = c.send_message("a@client.test", ["b@example.org"],
                       b"Subject: long\r\n\r\n" + b"x" * 999 + b"\r\n")
    assert r.code == 550 and r.dsn == "5.6.0", r
    assert "998" in r.text and "RFC 5322" in r.text, r
    assert mtad.queue() == {}
    r = c.send_message("a@client.test", ["b@example.org"], message("after"))
    assert r.code == 250, r
    c.quit()


def test_lim01_998_octet_line_reaches_a_strict_receiver(mtad_factory, sink_lab):
    """Issue 9.9, LIM-01: a 998-octet line (the RFC 5322 maximum) is
    relayed byte for byte to aiosmtpd, which refuses longer lines."""
    sink = sink_lab.aio()
    mtad = mtad_factory(dict(NODNS, **{"delivery.relayhost": relay_to(sink)}))
    body = b"y" * 998 + b"\r\n" + b"." + b"z" * 997 + b"\r\n"
    content = b"Subject: max line\r\n\r\n" + body
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    r = c.send_message("a@client.test", ["b@example.org"], content)
    assert r.code == 250, r
    c.quit()
    (rec,) = sink.wait_messages(1, timeout=20)
    assert rec["data"].endswith(body), rec["data"][-200:]


# ---------------------------------------------------------------------------
# 8. config checks

def _check(tmp_path, text, files=None):
    conf = tmp_path / "mtad.conf"
    conf.write_text(text)
    return subprocess.run([MTAD, "-c", str(conf), "--check-config"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=clean_env(), timeout=20), str(conf)


def test_config_backoff_order(tmp_path):
    """Issue 9.8: min_backoff = 1h with max_backoff = 2s is refused (exit
    2) with <file>:<line>: <key>: <why>."""
    p, conf = _check(tmp_path, "[delivery]\nmin_backoff = 1h\nmax_backoff = 2s\n")
    assert p.returncode == 2, p
    err = p.stderr.decode()
    assert ("%s:2: delivery.min_backoff: greater than delivery.max_backoff"
            % conf) in err, err


def test_config_tls_key_errors_name_file_line_key(tmp_path, tls_files):
    """Issue 9.8: TLS key errors have the <file>:<line>: <key>: <why> form,
    at start-up and in --check-config: a missing key file, a key that is
    not PEM."""
    cert, key = tls_files
    p, conf = _check(tmp_path, "[server]\ntls_cert = %s\ntls_key = %s/nope.pem\n"
                     % (cert, tmp_path))
    assert p.returncode == 2
    err = p.stderr.decode()
    assert "%s:3: server.tls_key: %s/nope.pem: No such file or directory" % (
        conf, tmp_path) in err, err
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    p, conf = _check(tmp_path, "[server]\n\ntls_cert = %s\ntls_key = %s\n" % (cert, bad))
    assert p.returncode == 2
    err = p.stderr.decode()
    assert "%s:4: server.tls_key: cannot load with server.tls_cert" % conf in err, err
    p, conf = _check(tmp_path, "[server]\ntls_cert = %s\ntls_key = %s\n" % (cert, key))
    assert p.returncode == 0, p.stderr
