"""Accepting mail: swaks and smtplib in, mtaq/mtactl out, log lines.

Covers SRV-24 (Received prepended, client bytes untouched), SRV-15,
queue ids, and the logfmt event contract.
"""
import re
import smtplib
import subprocess
import threading

from mtadtest import HOSTNAME, check_received, message, split_received
from smtpraw import QID_RE, RawSMTP, data_bytes


def swaks(mtad, *args, data=None, timeout=30):
    argv = ["/usr/bin/swaks", "--server", mtad.addr, "--port", str(mtad.port),
            "--helo", "swaks.client.test"] + list(args)
    if data is not None:
        argv += ["--data", data]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def test_swaks_message_listed_and_stored_exactly(mtad, tmp_path):
    """swaks sends one message; mtaq --json shows its envelope; mtactl cat
    prints our Received header (SRV-24) then exactly the client's bytes."""
    body_lines = ["From: Alice <alice@client.test>", "To: Bob <bob@example.org>",
                  "Subject: integration 1", "Message-Id: <it1@client.test>",
                  "", "line one", "  indented line two", ".leading dot", "", "last line"]
    datafile = tmp_path / "data.txt"
    datafile.write_text("\n".join(body_lines))  # swaks adds the last CRLF
    rc, out = swaks(mtad, "--from", "alice@client.test", "--to", "bob@example.org",
                    data="@" + str(datafile))
    assert rc == 0, out
    m = re.search(r"<-  250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})\s*$", out, re.M)
    assert m, "no '250 2.0.0 Ok: queued as QID' in swaks transcript:\n" + out
    qid = m.group(1)
    assert re.search(r"<-  220 %s ESMTP mtad" % re.escape(HOSTNAME), out), out

    q = mtad.mtaq()
    assert q["count"] == 1, q
    msg = q["messages"][0]
    assert msg["qid"] == qid
    assert msg["sender"] == "alice@client.test"
    assert [r["addr"] for r in msg["recipients"]] == ["bob@example.org"]
    assert msg["helo"] == "swaks.client.test"
    assert msg["client"] == "127.0.0.1"
    for key in ("arrival", "size", "state", "tls"):
        assert key in msg, (key, msg)
    assert all("state" in r for r in msg["recipients"]), msg

    stored = mtad.cat(qid)
    hdr, rest = split_received(stored)
    check_received(hdr, "swaks.client.test", "127.0.0.1", qid)
    assert re.search(r"\bwith ESMTP\b", hdr), hdr
    assert rest == ("\r\n".join(body_lines) + "\r\n").encode(), rest


def _send_batch(addr, port, n, tag, results, errors):
    try:
        s = smtplib.SMTP(addr, port, local_hostname="load.client.test", timeout=30)
        s.ehlo()
        for i in range(n):
            s.mail("load-%s-%d@client.test" % (tag, i))
            code, resp = s.rcpt("rcpt-%s-%d@example.org" % (tag, i))
            assert code == 250, (code, resp)
            code, resp = s.data(message("load %s %d" % (tag, i)))
            m = QID_RE.search(resp.decode())
            assert code == 250 and m, (code, resp)
            results.append((m.group(1), "load-%s-%d@client.test" % (tag, i)))
        s.quit()
    except Exception as e:  # reported by the main thread
        errors.append("%s: %r" % (tag, e))


def test_200_messages_20_concurrent_sessions(mtad):
    """20 concurrent sessions x 10 messages: every QID the server returned
    is in the spool with its own sender, and there are exactly 200 (SRV-23:
    a 250 means committed; group commit must not lose or mix messages)."""
    results, errors = [], []
    threads = [threading.Thread(target=_send_batch,
                                args=(mtad.addr, mtad.port, 10, "t%02d" % t, results, errors))
               for t in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 200
    qids = [q for q, _ in results]
    assert len(set(qids)) == 200, "duplicate queue ids returned"
    q = mtad.mtaq()
    assert q["count"] == 200
    listed = {m["qid"]: m for m in q["messages"]}
    assert set(listed) == set(qids)
    for qid, sender in results:
        assert listed[qid]["sender"] == sender, (qid, listed[qid])
    assert mtad.alive()


def test_log_events_for_one_session(mtad):
    """Log contract: connect, reject (code as replied), accept (qid, size,
    from, nrcpt), disconnect, all with the same sid."""
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo("log.client.test").code == 250
    assert c.cmd("MAIL FROM:<logger@client.test>").code == 250
    assert c.cmd("RCPT TO:<ok@example.org>").code == 250
    bad = c.cmd("RCPT TO:<no-closing-bracket@example.org")
    assert 500 <= bad.code < 600, bad
    assert c.cmd("DATA").code == 354
    content = message("log test")
    c.send(data_bytes(content))
    r = c.reply()
    assert r.code == 250 and r.qid, r
    assert c.quit(wait=5).code == 221
    assert c.eof, "SRV-15: no close after 221"

    disc = mtad.wait_event("disconnect")
    assert disc, mtad.log_text()
    connects = mtad.events("connect")
    assert len(connects) == 1, connects
    sid = connects[0]["sid"]
    assert connects[0]["client"] == "127.0.0.1"

    rejects = mtad.events("reject", sid=sid)
    assert len(rejects) == 1, rejects
    assert rejects[0]["code"] == str(bad.code)
    assert rejects[0]["verb"] == "RCPT"
    assert rejects[0].get("dsn") == bad.dsn
    assert "text" in rejects[0]

    accepts = mtad.events("accept", sid=sid)
    assert len(accepts) == 1, accepts
    a = accepts[0]
    assert a["qid"] == r.qid
    assert a["from"] in ("logger@client.test", "<logger@client.test>"), a
    assert a["nrcpt"] == "1"
    assert int(a["size"]) >= len(content), a
    assert "tls" in a

    d = mtad.events("disconnect", sid=sid)
    assert len(d) == 1 and d[0].get("reason"), d
    lines = mtad.log_text().splitlines()
    order = [lines.index(e["_line"]) for e in (connects[0], rejects[0], a, d[0])]
    assert order == sorted(order), "events out of order: %r" % order
