"""Self-tests of the delivery-test lab (tests/lab/sinks.py): every knob of
AioSink, RawSink, SmtpSink and StartTlsStripper does what it says, driven by
smtplib, raw sockets and swaks.  No mtad needed."""
import base64
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))

import sinks  # noqa: E402
from sinks import sink_lab  # noqa: E402,F401  (the fixture)


# ---------------------------------------------------------------------------
# helpers

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca = sinks.make_ca("Lab Test Root")
    inter = sinks.make_ca("Lab Test Int", issuer=ca)
    leaf = sinks.issue(inter, ["mx.s.test"])
    cert, key = leaf.write(d, "mx")
    return {"dir": d, "ca": ca, "inter": inter, "leaf": leaf, "tls": (cert, key),
            "cafile": ca.write_ca(os.path.join(d, "ca.pem"))}


def client_ctx(pki):
    ctx = ssl.create_default_context(cafile=pki["cafile"])
    return ctx


class Raw:
    """Tiny raw SMTP client: exact bytes out, reply lines in."""

    def __init__(self, addr, port, timeout=5):
        self.s = socket.create_connection((addr, port), timeout=timeout)
        self.buf = b""

    def send(self, b):
        self.s.sendall(b)

    def read_reply(self):
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                d = self.s.recv(65536)
                if not d:
                    raise EOFError(b"".join(lines) + self.buf)
                self.buf += d
            i = self.buf.index(b"\r\n") + 2
            line, self.buf = self.buf[:i], self.buf[i:]
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def cmd(self, b):
        self.send(b)
        return self.read_reply()

    def read_n(self, n, timeout=5):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n and time.monotonic() < deadline:
            d = self.s.recv(65536)
            if not d:
                break
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def close(self):
        self.s.close()


def eof_within(sock, timeout=3):
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except (socket.timeout, ConnectionError):
        return False


# ---------------------------------------------------------------------------
# certificates

def test_certs_ca_chain_and_validity(pki, tmp_path):
    from cryptography import x509
    # leaf verifies through the intermediate to the root (Python's ssl does it)
    with open(pki["tls"][0], "rb") as f:
        pems = f.read()
    assert pems.count(b"BEGIN CERTIFICATE") == 2          # leaf + intermediate
    expired = sinks.issue(pki["ca"], "old.test", not_before=-30, not_after=-1)
    assert expired.cert.not_valid_after < sinks._now().replace(tzinfo=None)
    future = sinks.issue(pki["ca"], "new.test", not_before=5)
    assert future.cert.not_valid_before > sinks._now().replace(tzinfo=None)
    nosan = sinks.issue(pki["ca"], "cn.test", san=False)
    with pytest.raises(x509.ExtensionNotFound):
        nosan.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    selfs = sinks.self_signed(["self.test", "127.1.2.3"])
    assert selfs.cert.issuer == selfs.cert.subject
    t = pki["leaf"].tlsa(3, 1, 1).split()
    assert t[:3] == ["3", "1", "1"] and len(t[3]) == 64


# ---------------------------------------------------------------------------
# AioSink

def test_aio_records_exact_bytes_and_connections(sink_lab):
    s = sink_lab.aio()
    assert os.path.exists(s.pid_file)
    body = (b"Subject: t\r\n\r\nline1\r\n..leading dot\r\n\xe9 8bit\r\n"
            b"bare\nlf in a line\r\nlast\r\n")
    c = Raw(s.addr, s.port)
    assert c.read_reply().startswith(b"220")
    assert c.cmd(b"EHLO client.test\r\n").startswith(b"250")
    assert c.cmd(b"MAIL FROM:<a@x.test> BODY=8BITMIME SIZE=100\r\n").startswith(b"250")
    assert c.cmd(b"RCPT TO:<b@y.test>\r\n").startswith(b"250")
    assert c.cmd(b"DATA\r\n").startswith(b"354")
    assert c.cmd(body + b".\r\n").startswith(b"250")
    c.cmd(b"QUIT\r\n")
    c.close()
    # a second connection
    with smtplib.SMTP(s.addr, s.port) as m:
        m.sendmail("c@x.test", ["d@y.test"], b"Subject: 2\r\n\r\nx\r\n")
    msgs = s.wait_messages(2)
    m1, m2 = msgs
    # aiosmtpd removed the stuffing dot of "..leading dot" and nothing else
    assert m1["data"] == body.replace(b"\r\n..leading", b"\r\n.leading")
    assert m1["mail_from"] == "a@x.test" and m1["rcpt_tos"] == ["b@y.test"]
    assert m1["mail_options"] == ["BODY=8BITMIME", "SIZE=100"]
    assert m1["peer"][0] == "127.0.0.1" and m1["tls"] is False
    assert (m1["conn"], m2["conn"]) == (1, 2)
    assert s.connections() == 2
    s.wait_event("disconnect", n=2)


def test_aio_starttls_records_sni_and_version(sink_lab, pki):
    s = sink_lab.aio(tls=pki["tls"])
    with smtplib.SMTP(s.addr, s.port) as m:
        m._host = "mx.s.test"                 # SNI + name check against the cert
        m.starttls(context=client_ctx(pki))
        m.sendmail("a@x.test", ["b@y.test"], b"Subject: tls\r\n\r\nx\r\n")
    (msg,) = s.wait_messages(1)
    assert msg["tls"] is True and msg["sni"] == "mx.s.test"
    assert msg["tls_version"] in ("TLSv1.2", "TLSv1.3")
    ehlos = s.events("ehlo")
    assert "STARTTLS" in ehlos[0]["ext"] and "STARTTLS" not in ehlos[1]["ext"]


def test_aio_require_tls_and_tls_version_cap(sink_lab, pki):
    s = sink_lab.aio(tls=pki["tls"], require_tls=True, tls_max_version="TLSv1_2")
    c = Raw(s.addr, s.port)
    c.read_reply()
    c.cmd(b"EHLO c.test\r\n")
    assert c.cmd(b"MAIL FROM:<a@x.test>\r\n").startswith(b"530")
    c.close()
    with smtplib.SMTP(s.addr, s.port) as m:
        m._host = "mx.s.test"
        m.starttls(context=client_ctx(pki))
        m.sendmail("a@x.test", ["b@y.test"], b"x\r\n")
    (msg,) = s.wait_messages(1)
    assert msg["tls_version"] == "TLSv1.2"


def test_aio_per_recipient_replies(sink_lab):
    """CLI-05 conditions: a 250, b 450, c 550."""
    s = sink_lab.aio(rcpt_replies={"b@y.test": "450 4.2.0 try later",
                                   "c@y.test": "550 5.1.1 no such user"})
    with smtplib.SMTP(s.addr, s.port) as m:
        refused = m.sendmail("a@x.test", ["a@y.test", "b@y.test", "c@y.test"], b"x\r\n")
    assert refused == {"b@y.test": (450, b"4.2.0 try later"),
                       "c@y.test": (550, b"5.1.1 no such user")}
    (msg,) = s.wait_messages(1)
    assert msg["rcpt_tos"] == ["a@y.test"]
    assert [e["reply"][:3] for e in s.events("rcpt")] == ["250", "450", "550"]


def test_aio_fail_first_n_across_connections(sink_lab):
    s = sink_lab.aio(fail_first=2)            # default: 451 after DATA
    codes = []
    for i in range(3):
        with smtplib.SMTP(s.addr, s.port) as m:
            try:
                m.sendmail("a@x.test", ["b@y.test"], b"try %d\r\n" % i)
                codes.append(250)
            except smtplib.SMTPDataError as e:
                codes.append(e.smtp_code)
    assert codes == [451, 451, 250]
    assert [m["data"] for m in s.messages()] == [b"try 2\r\n"]
    assert len(s.transactions()) == 3 and s.connections() == 3


def test_aio_fail_first_at_mail_and_connect(sink_lab):
    """CLI-09 (550 to MAIL once, then 250) and a 421 greeting once."""
    s = sink_lab.aio(fail_first=1, fail_stage="mail", fail_reply="550 5.7.1 not now")
    with smtplib.SMTP(s.addr, s.port) as m:
        with pytest.raises(smtplib.SMTPSenderRefused) as ei:
            m.sendmail("a@x.test", ["b@y.test"], b"1\r\n")
        assert ei.value.smtp_code == 550
        m.rset()
        m.sendmail("a@x.test", ["b@y.test"], b"2\r\n")   # same connection
    assert [x["data"] for x in s.wait_messages(1)] == [b"2\r\n"]

    t = sink_lab.aio(fail_first=1, fail_stage="connect",
                     fail_reply="421 4.3.2 not yet")
    c = Raw(t.addr, t.port)
    assert c.read_reply() == b"421 4.3.2 not yet\r\n"
    assert eof_within(c.s)
    c.close()
    with smtplib.SMTP(t.addr, t.port) as m:
        m.sendmail("a@x.test", ["b@y.test"], b"x\r\n")
    t.wait_messages(1)
    assert t.connections() == 2


def test_aio_mail_and_data_replies(sink_lab):
    s = sink_lab.aio(mail_reply="451 4.3.0 mail later")
    with smtplib.SMTP(s.addr, s.port) as m:
        with pytest.raises(smtplib.SMTPSenderRefused) as ei:
            m.sendmail("a@x.test", ["b@y.test"], b"x\r\n")
    assert ei.value.smtp_code == 451
    t = sink_lab.aio(data_reply="554 5.6.0 content rejected")
    with smtplib.SMTP(t.addr, t.port) as m:
        with pytest.raises(smtplib.SMTPDataError) as ei:
            m.sendmail("a@x.test", ["b@y.test"], b"x\r\n")
    assert ei.value.smtp_code == 554
    (tx,) = t.transactions()
    assert tx["accepted"] is False and t.messages() == []


def test_aio_recipient_cap_452(sink_lab):
    """CLI-12 conditions: 150 recipients, the sink takes 100 and 452s the rest."""
    s = sink_lab.aio(max_rcpts=100)
    rcpts = ["r%03d@y.test" % i for i in range(150)]
    with smtplib.SMTP(s.addr, s.port) as m:
        refused = m.sendmail("a@x.test", rcpts, b"x\r\n")
    assert sorted(refused) == rcpts[100:]
    assert all(v[0] == 452 for v in refused.values())
    (msg,) = s.wait_messages(1)
    assert msg["rcpt_tos"] == rcpts[:100]


def test_aio_hide_extensions_size_dsn(sink_lab):
    s = sink_lab.aio(hide=["8BITMIME", "SMTPUTF8", "PIPELINING"], size=1000, dsn=True)
    with smtplib.SMTP(s.addr, s.port) as m:
        m.ehlo("c.test")
        feats = set(m.esmtp_features)
        assert feats == {"size", "enhancedstatuscodes", "dsn"}
        assert m.esmtp_features["size"] == "1000"
        code, _ = m.mail("big@x.test", ["SIZE=2000"])
        assert code == 552
        code, _ = m.mail("a@x.test", ["BODY=8BITMIME"])
        assert code == 555                       # 8BITMIME is hidden
        assert m.mail("a@x.test", ["RET=HDRS", "ENVID=QQ123"])[0] == 250
        assert m.rcpt("b@y.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@y.test"])[0] == 250
        assert m.data(b"x\r\n")[0] == 250
    (msg,) = s.wait_messages(1)
    assert msg["mail_args"] == "FROM:<a@x.test> RET=HDRS ENVID=QQ123"
    assert msg["rcpt_params"] == [["NOTIFY=SUCCESS,FAILURE", "ORCPT=RFC822;B@Y.TEST"]]
    assert msg["rcpt_args"] == ["TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y.test"]
    # without dsn=True, DSN is neither offered nor accepted
    t = sink_lab.aio(size=None)
    with smtplib.SMTP(t.addr, t.port) as m:
        m.ehlo("c.test")
        assert "dsn" not in m.esmtp_features and "size" not in m.esmtp_features
        assert m.mail("a@x.test", ["RET=HDRS"])[0] == 555


def test_aio_with_swaks_tls(sink_lab, pki):
    if not shutil.which("swaks"):
        pytest.skip("swaks not installed")
    s = sink_lab.aio(tls=pki["tls"])
    r = subprocess.run(["swaks", "--server", s.addr, "--port", str(s.port),
                        "--from", "a@x.test", "--to", "b@y.test", "--tls",
                        "--tls-sni", "mx.s.test", "--ehlo", "swaks.test",
                        "--body", "via swaks"],
                       capture_output=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    (msg,) = s.wait_messages(1)
    assert msg["tls"] is True and msg["sni"] == "mx.s.test"
    assert msg["helo"] == "swaks.test" and b"via swaks" in msg["data"]


# ---------------------------------------------------------------------------
# RawSink

def test_raw_transcript_and_exact_ehlo(sink_lab):
    s = sink_lab.raw(ehlo_ext=["PIPELINING", "CHUNKING"])
    sent = [b"EHLO c.test\r\n", b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<b@y.test>\r\n",
            b"DATA\r\n", b"Subject: s\r\n\r\n..x\r\n.\r\n", b"QUIT\r\n"]
    c = Raw(s.addr, s.port)
    c.read_reply()
    ehlo = c.cmd(sent[0])
    assert ehlo == b"250-rawsink.test greets c.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
    for b in sent[1:]:
        c.cmd(b)
    c.close()
    (msg,) = s.wait_messages(1)
    assert msg["data"] == b"Subject: s\r\n\r\n.x\r\n"
    assert msg["data_raw"] == b"Subject: s\r\n\r\n..x\r\n"
    assert msg["terminator"] == b"\r\n.\r\n"
    s.wait_event("disconnect")
    (sess,) = s.sessions()
    assert sess["client"] == b"".join(sent)
    assert sess["server"].startswith(b"220 rawsink.test ESMTP") and ehlo in sess["server"]


def test_raw_ehlo_502_helo_fallback(sink_lab):
    """CLI-11 conditions: EHLO gets 502; smtplib falls back to HELO."""
    s = sink_lab.raw(ehlo_reply="502 5.5.1 EHLO not implemented")
    with smtplib.SMTP(s.addr, s.port) as m:
        m.sendmail("a@x.test", ["b@y.test"], b"x\r\n")
    (msg,) = s.wait_messages(1)
    assert msg["mail_args"] == "FROM:<a@x.test>"
    s.wait_event("disconnect")
    client = s.sessions()[0]["client"]
    assert client.startswith(b"ehlo ") and b"\r\nhelo " in client


def test_raw_pipelining_bdat(sink_lab):
    s = sink_lab.raw()
    c = Raw(s.addr, s.port)
    c.read_reply()
    c.cmd(b"EHLO c.test\r\n")
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\n.\r\n")
    replies = [c.read_reply() for _ in range(4)]
    assert [r[:3] for r in replies] == [b"250"] * 4
    c.close()
    (msg,) = s.wait_messages(1)
    assert msg["data"] == b"ab\r\nc.\r\n" and msg["via"] == "BDAT"


def test_raw_starttls_injection_bytes(sink_lab, pki):
    """TLS-11 conditions: the 220 and an injected line in one segment."""
    inj = b"250-INJECTED\r\n"
    s = sink_lab.raw(tls=pki["tls"], starttls_reply="220 Go ahead",
                     starttls_inject=inj)
    c = Raw(s.addr, s.port)
    c.read_reply()
    assert c.cmd(b"EHLO c.test\r\n").endswith(b"250 STARTTLS\r\n")
    c.send(b"STARTTLS\r\n")
    got = c.read_n(len(b"220 Go ahead\r\n" + inj))
    assert got == b"220 Go ahead\r\n" + inj
    # the server wrote both in one send(): recorded as one S chunk
    s.wait_for(lambda: any(ch == ("S", False, got) for ch in s.sessions()[0]["chunks"]))
    # and then really does TLS with SNI
    tls = client_ctx(pki).wrap_socket(c.s, server_hostname="mx.s.test")
    tls.settimeout(5)
    tls.sendall(b"EHLO c.test\r\n")
    buf = b""
    while not buf.endswith(b"\r\n") or b"250 " not in buf:
        buf += tls.recv(4096)
    assert b"STARTTLS" not in buf
    tls.close()
    ev = s.wait_event("tls")[0]
    assert ev["sni"] == "mx.s.test"
    s.wait_event("disconnect")
    sess = s.sessions()[0]
    assert sess["client_tls"] == b"EHLO c.test\r\n"


def test_raw_starttls_454(sink_lab, pki):
    s = sink_lab.raw(tls=pki["tls"], starttls_reply="454 4.7.0 TLS not available")
    with smtplib.SMTP(s.addr, s.port) as m:
        m.ehlo("c.test")
        with pytest.raises(smtplib.SMTPResponseException) as ei:
            m.starttls(context=client_ctx(pki))
        assert ei.value.smtp_code == 454
        m.sendmail("a@x.test", ["b@y.test"], b"plain\r\n")
    (msg,) = s.wait_messages(1)
    assert msg["tls"] is False


def test_raw_close_after_mail_and_421(sink_lab):
    """CLI-06 conditions: the connection drops after MAIL; 421 at RCPT."""
    s = sink_lab.raw(close_at="MAIL")
    with smtplib.SMTP(s.addr, s.port) as m:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            m.sendmail("a@x.test", ["b@y.test"], b"x\r\n")
    assert s.wait_event("close_at")[0]["step"] == "MAIL"
    t = sink_lab.raw(reply_421_at="RCPT")
    c = Raw(t.addr, t.port)
    c.read_reply()
    c.cmd(b"EHLO c.test\r\n")
    c.cmd(b"MAIL FROM:<a@x.test>\r\n")
    assert c.cmd(b"RCPT TO:<b@y.test>\r\n").startswith(b"421 4.3.2")
    assert eof_within(c.s)
    c.close()
    assert t.messages() == []


@pytest.mark.parametrize("phase", ["CONNECT", "DATA", "DOT"])
def test_raw_stall(sink_lab, phase):
    s = sink_lab.raw(stall_at=phase)
    m = smtplib.SMTP(timeout=0.7)
    t0 = time.monotonic()
    with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
        m.connect(s.addr, s.port)
        m.sendmail("a@x.test", ["b@y.test"], b"x\r\n")
    assert time.monotonic() - t0 >= 0.6
    m.close()
    assert s.wait_event("stall")[0]["step"] == phase
    s.wait_event("disconnect")          # the sink saw the client give up
    assert s.alive()


def test_raw_lenient_dot_vs_strict(sink_lab):
    """SMUG-05 conditions: a lenient sink ends DATA at <LF>.<LF>; the strict
    one keeps it as message content."""
    payload = (b"Subject: a\r\n\r\nx\n.\nMAIL FROM:<evil@x.test>\r\n"
               b"RCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n")
    results = {}
    for lenient in (False, True):
        s = sink_lab.raw(lenient_dot=lenient)
        c = Raw(s.addr, s.port)
        c.read_reply()
        c.cmd(b"EHLO c.test\r\n")
        c.cmd(b"MAIL FROM:<a@x.test>\r\n")
        c.cmd(b"RCPT TO:<b@y.test>\r\n")
        c.cmd(b"DATA\r\n")
        c.send(payload)
        time.sleep(0.3)
        c.send(b"QUIT\r\n")
        assert eof_within(c.s)
        c.close()
        results[lenient] = s.messages()
    strict, lenient = results[False], results[True]
    assert len(strict) == 1 and strict[0]["data"] == payload[:-3]
    assert len(lenient) == 2
    assert lenient[0]["data"] == b"Subject: a\r\n\r\nx\n" and lenient[0]["terminator"] == b"\n.\n"
    assert lenient[1]["mail_from"] == "evil@x.test" and lenient[1]["data"] == b"smuggled\r\n"


def test_stop_kills_stalled_sink_by_pid(sink_lab):
    s = sink_lab.raw(stall_at="CONNECT", stall_read=False)
    c = socket.create_connection((s.addr, s.port))
    pid = s.proc.pid
    s.stop()
    assert not os.path.exists(s.pid_file)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert eof_within(c)
    c.close()


# ---------------------------------------------------------------------------
# SmtpSink (Postfix smtp-sink)

def test_smtp_sink_counts_connections_and_messages(sink_lab):
    if not os.access(sinks.SMTP_SINK, os.X_OK):
        pytest.skip("postfix (smtp-sink) not installed")
    s = sink_lab.smtp_sink()
    with smtplib.SMTP(s.addr, s.port) as m:
        for i in range(3):
            m.sendmail("a@x.test", ["b@y.test", "c@y.test"], b"Subject: %d\r\n\r\nbody\r\n" % i)
    s.wait_for(lambda: s.counts()["sessions_ended"] == 1, what="session end")
    assert s.counts() == {"connections": 1, "sessions_ended": 1, "quits": 1, "messages": 3}
    msgs = s.messages()
    assert len(msgs) == 3
    assert msgs[0]["mail_args"].startswith("<a@x.test>")
    assert msgs[0]["rcpt_args"] == ["<b@y.test>", "<c@y.test>"]
    assert sorted(m["data"] for m in msgs) == [b"Subject: %d\n\nbody\n" % i for i in range(3)]
    with smtplib.SMTP(s.addr, s.port) as m:
        m.sendmail("a@x.test", ["b@y.test"], b"x\r\n")
    s.wait_for(lambda: s.counts()["messages"] == 4, what="4th message")
    assert s.connections() == 2


# ---------------------------------------------------------------------------
# StartTlsStripper

def test_stripper_removes_starttls(sink_lab, pki):
    backend = sink_lab.aio(tls=pki["tls"])
    p = sink_lab.stripper(backend)
    with smtplib.SMTP(backend.addr, backend.port) as m:
        m.ehlo("c.test")
        assert m.has_extn("starttls")
    with smtplib.SMTP(p.addr, p.port) as m:
        m.ehlo("c.test")
        assert not m.has_extn("starttls") and m.has_extn("size")
        m.sendmail("a@x.test", ["b@y.test"], b"through the proxy\r\n")
    msg = backend.wait_messages(1)[0]
    assert msg["data"] == b"through the proxy\r\n" and msg["tls"] is False
    assert len(p.events("stripped")) == 1 and p.connections() == 1


def test_stripper_last_line_and_454(sink_lab, pki):
    # STARTTLS as the *last* EHLO line: the line before must become "250 "
    backend = sink_lab.raw(tls=pki["tls"], ehlo_ext=["PIPELINING", "STARTTLS"])
    p = sink_lab.stripper(backend, answer_454=True)
    c = Raw(p.addr, p.port)
    c.read_reply()
    assert c.cmd(b"EHLO c.test\r\n") == b"250-rawsink.test greets c.test\r\n250 PIPELINING\r\n"
    assert c.cmd(b"STARTTLS\r\n") == b"454 4.7.0 TLS not available\r\n"
    assert c.cmd(b"NOOP\r\n").startswith(b"250")
    # a body line "STARTTLS" is message data, not intercepted
    c.cmd(b"MAIL FROM:<a@x.test>\r\n")
    c.cmd(b"RCPT TO:<b@y.test>\r\n")
    c.cmd(b"DATA\r\n")
    assert c.cmd(b"STARTTLS\r\n.\r\n").startswith(b"250")
    c.cmd(b"QUIT\r\n")
    c.close()
    assert backend.wait_messages(1)[0]["data"] == b"STARTTLS\r\n"
    backend.wait_event("disconnect")
    assert b"STARTTLS\r\n" not in backend.sessions()[0]["client"].split(b"DATA\r\n")[0]
    assert len(p.events("starttls_intercepted")) == 1
    # without answer_454 a client that insists still gets real TLS through it
    q = sink_lab.stripper(backend)
    with smtplib.SMTP(q.addr, q.port) as m:
        m.ehlo("c.test")
        assert not m.has_extn("starttls")
        m.esmtp_features["starttls"] = ""
        m._host = "mx.s.test"
        m.starttls(context=client_ctx(pki))
        m.sendmail("a@x.test", ["b@y.test"], b"tls via proxy\r\n")
    msg = backend.wait_messages(2)[1]
    assert msg["tls"] is True and msg["sni"] == "mx.s.test"
