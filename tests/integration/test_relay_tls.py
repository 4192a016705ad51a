"""Relay control (AUTH-12 / SRV-22b) and inbound STARTTLS (TLS-01, TLS-04,
Received with ESMTPS)."""
import re
import smtplib
import subprocess

from mtadtest import alloc_addr, check_received, message, split_received
from smtpraw import QID_RE, RawSMTP, unverified_context


def test_auth12_srv22b_relay_denied_outside_relay_networks(mtad_factory):
    """AUTH-12 / SRV-22(b): a client outside server.relay_networks gets
    554 5.7.1 Relay access denied at RCPT, DATA goes nowhere, nothing is
    queued, and the log records the reject with code=554.  The same RCPT
    from inside the network is accepted (it is the address that matters).
    (With server.postmaster set the outsider gets a session at all; without
    it the greeting is already 554: test_hostile.py.)"""
    mtad = mtad_factory({"server.relay_networks": "127.0.0.1/32",
                         "server.postmaster": "pm@site.test"})
    outside = alloc_addr()
    c = RawSMTP(mtad.addr, mtad.port, source=outside)
    assert c.greeting().code == 220
    assert c.ehlo("outsider.test").code == 250
    assert c.cmd("MAIL FROM:<spammer@outsider.test>").code == 250
    r = c.cmd("RCPT TO:<victim@example.org>")
    assert r.code == 554 and r.dsn == "5.7.1", r
    assert "Relay access denied" in r.text, r
    d = c.cmd("DATA")
    assert d.code in (503, 554), d
    # If DATA was (wrongly) accepted, finish it so we can see what happens.
    if d.code == 354:
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        c.reply()
    c.quit()
    assert mtad.queue() == {}

    conn = mtad.events("connect", client=outside)
    assert len(conn) == 1, mtad.log_text()
    rej = mtad.events("reject", sid=conn[0]["sid"], verb="RCPT")
    assert rej and rej[0]["code"] == "554", rej

    inside = RawSMTP(mtad.addr, mtad.port)  # source 127.0.0.1
    assert inside.greeting().code == 220
    assert inside.ehlo("insider.test").code == 250
    ok = inside.send_message("app@insider.test", ["victim@example.org"], message("inside"))
    assert ok.code == 250, ok
    inside.quit()
    assert list(mtad.queue()) == [ok.qid]


def _tls_msg(mtad, qid):
    hdr, _ = split_received(mtad.cat(qid))
    return hdr


def test_starttls_smtplib_esmtps_received_and_tls01(mtad):
    """STARTTLS with smtplib: 220 2.0.0, STARTTLS offered before TLS and
    absent after (TLS-01); the message is accepted; Received says ESMTPS
    with the TLS version; mtaq's tls field differs from a plaintext
    message's."""
    s = smtplib.SMTP(mtad.addr, mtad.port, local_hostname="tls.client.test", timeout=20)
    s.ehlo()
    assert s.has_extn("starttls"), s.esmtp_features
    code, resp = s.starttls(context=unverified_context())
    assert code == 220 and resp.startswith(b"2.0.0"), (code, resp)
    s.ehlo()
    assert not s.has_extn("starttls"), "TLS-01: STARTTLS offered inside TLS: %r" % s.esmtp_features
    tls_version = s.sock.version()
    s.mail("tls@client.test")
    s.rcpt("rcpt@example.org")
    code, resp = s.data(message("over tls"))
    assert code == 250, (code, resp)
    qid = QID_RE.search(resp.decode()).group(1)
    s.quit()

    p = smtplib.SMTP(mtad.addr, mtad.port, local_hostname="plain.client.test", timeout=20)
    p.sendmail("plain@client.test", ["rcpt@example.org"], message("plain"))
    p.quit()

    hdr = _tls_msg(mtad, qid)
    m = check_received(hdr, "tls.client.test", "127.0.0.1", qid)
    assert m["with"] == "ESMTPS", hdr
    # e.g. "TLSv1.3" from OpenSSL is "TLS1.3" in GnuTLS' spelling
    ver = tls_version.replace("TLSv", "")
    assert re.search(r"TLS\s*v?%s" % re.escape(ver), hdr, re.I), (tls_version, hdr)

    q = mtad.queue()
    assert len(q) == 2
    plain = [m for m in q.values() if m["sender"] == "plain@client.test"][0]
    tlsm = q[qid]
    assert tlsm["tls"] and tlsm["tls"] != plain["tls"], (tlsm["tls"], plain["tls"])
    plain_hdr = _tls_msg(mtad, plain["qid"])
    assert re.search(r"\bwith ESMTP\b", plain_hdr), plain_hdr

    acc = mtad.events("accept", qid=qid)
    assert acc and acc[0].get("tls") not in (None, "", "no", "none", "0"), acc


def test_starttls_swaks(mtad):
    """swaks --tls: accepted; stored with ESMTPS; mtaq tls set."""
    p = subprocess.run(["/usr/bin/swaks", "--server", mtad.addr, "--port", str(mtad.port),
                        "--helo", "swaks-tls.client.test", "--tls",
                        "--from", "swakstls@client.test", "--to", "rcpt@example.org"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out
    m = re.search(r"<~  250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})", out)
    assert m, "no TLS-protected 250 queued-as in:\n" + out
    qid = m.group(1)
    assert "TLS started" in out, out
    q = mtad.queue()
    assert list(q) == [qid]
    assert q[qid]["sender"] == "swakstls@client.test"
    assert q[qid]["tls"], q[qid]
    hdr = _tls_msg(mtad, qid)
    assert check_received(hdr, "swaks-tls.client.test", "127.0.0.1", qid)["with"] == "ESMTPS"


def test_tls04_plaintext_injection_discarded(mtad):
    """TLS-04: 'STARTTLS\\r\\nRSET\\r\\nMAIL FROM:<inj@x>\\r\\n' in one write.
    After the handshake the first reply is the EHLO's; the injected MAIL did
    not run (RCPT gets 503); the log says how many bytes were discarded."""
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo("inject.client.test").code == 250
    injected = b"RSET\r\nMAIL FROM:<inj@x>\r\n"
    c.send(b"STARTTLS\r\n" + injected)
    r = c.reply()
    assert r.code == 220 and r.dsn == "2.0.0", r
    assert c.buf == b"", "plaintext replies to the injected commands: %r" % c.buf
    c.sock = unverified_context().wrap_socket(c.sock)
    e = c.ehlo("inject.client.test")
    assert e.code == 250 and len(e.lines) > 1 and e.lines[0].startswith("250-mtad.test"), \
        "first reply after TLS is not the EHLO's: %r" % e
    assert not any("STARTTLS" in l.upper() for l in e.lines[1:]), e  # TLS-01
    r = c.cmd("RCPT TO:<a@b.example>")
    assert r.code == 503, "injected MAIL FROM ran inside TLS: %r" % r
    assert c.pending(0.3) == b""
    c.quit()
    st = mtad.wait_event("starttls")
    assert st and st[0]["discarded"] == str(len(injected)), st
    assert mtad.queue() == {}
