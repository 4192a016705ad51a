"""Shared helpers for the delivery tests that run mtad against the DNS lab
(tests/lab/dnslab.py) and the lab's sinks (tests/lab/sinks.py).

Used by test_dane.py.  Nothing here starts anything at import time.

    dns = start_dns_lab()              # DnsLab on free ports, started
    port = choose_port([addr, ...])    # one port free on every sink address
    s = mtad_settings(dns, port, **{"tls.default_level": "may"})
    qid = submit(mtad, SENDER, ["bob@x.s.test"], msg("subject"))
    (ev,) = wait_delivery(mtad, qid, status="sent")
"""
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LAB = os.path.join(HERE, "..", "..", "lab")
if LAB not in sys.path:
    sys.path.insert(0, LAB)

import dnslab  # noqa: E402
import sinks  # noqa: E402

from smtpraw import RawSMTP, data_bytes  # noqa: E402

SENDER = "alice@client.test"


# ---------------------------------------------------------------------------
# DNS lab and ports

def lab_tools_missing():
    """The first missing lab binary, or None."""
    for tool in (dnslab.KNOTD, dnslab.KNOTC, dnslab.UNBOUND,
                 dnslab.UNBOUND_CONTROL, dnslab.SIGNZONE, dnslab.KEYGEN):
        if not os.access(tool, os.X_OK):
            return tool
    return None


def free_port_triple(addr, start=None):
    """base such that base, base+1, base+2 are free (UDP and TCP) on addr."""
    start = start or 21000 + (os.getpid() % 400) * 30
    for base in range(start, 65000, 7):
        ok = True
        for p in range(base, base + 3):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(socket.AF_INET, kind)
                try:
                    s.bind((addr, p))
                except OSError:
                    ok = False
                finally:
                    s.close()
        if ok:
            return base
    raise RuntimeError("no three free ports on %s" % addr)


def start_dns_lab(addr=None, port=None):
    """A started DnsLab (caller stops it).  DNSLAB_ADDR / DNSLAB_PORT
    override the address and port."""
    addr = addr or os.environ.get("DNSLAB_ADDR", "127.0.53.1")
    port = port or int(os.environ.get("DNSLAB_PORT", "0")) or free_port_triple(addr)
    lab = dnslab.DnsLab(addr, port)
    try:
        lab.start()
    except Exception:
        lab.stop()
        raise
    return lab


def choose_port(addrs):
    """A TCP port free on every address in addrs (all sinks share it)."""
    for _ in range(200):
        port = sinks.free_port(addrs[0])
        ok = True
        for a in addrs:
            s = socket.socket()
            try:
                s.bind((a, port))
            except OSError:
                ok = False
            finally:
                s.close()
            if not ok:
                break
        if ok:
            return port
    raise RuntimeError("no port free on all lab addresses")


def mtad_settings(dns, port, **extra):
    """mtad settings that deliver into the lab: delivery.port = port,
    the lab's resolver and trust anchor, short backoffs.  extra keys are
    "section.key" (or section__key)."""
    s = {
        "delivery.relayhost": "",
        "delivery.port": str(port),
        "delivery.min_backoff": "1s",
        "delivery.max_backoff": "2s",
        "delivery.connect_timeout": "2s",
        "dns.resolver": dns.resolver,
        "dns.trust_anchor": dns.trust_anchor,
        "dns.timeout": "3s",
    }
    s.update({k.replace("__", "."): v for k, v in extra.items()})
    return s


# ---------------------------------------------------------------------------
# submitting and waiting

def msg(subject="test", body=b"hello\r\n", sender=SENDER, to="x@example.org"):
    return (b"From: <" + sender.encode() + b">\r\nTo: <" + to.encode() +
            b">\r\nSubject: " + subject.encode() + b"\r\n"
            b"Message-ID: <" + subject.encode().replace(b" ", b"-") +
            b"@client.test>\r\n\r\n" + body)


def submit(mtad, sender, rcpts, content):
    """One message into mtad over SMTP; returns its queue id."""
    c = RawSMTP(mtad.addr, mtad.port)
    try:
        assert c.greeting().code == 220
        assert c.ehlo("client.test").code == 250
        r = c.cmd("MAIL FROM:<%s>" % sender)
        assert r.code == 250, r
        for rc in rcpts:
            r = c.cmd("RCPT TO:<%s>" % rc)
            assert r.code == 250, (rc, r)
        r = c.cmd("DATA")
        assert r.code == 354, r
        c.send(data_bytes(content))
        r = c.reply()
        assert r.code == 250 and r.qid, r
        return r.qid
    finally:
        c.quit(wait=0.2)


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what() if callable(what) else what))
        time.sleep(0.05)


def deliveries(mtad, qid=None, **match):
    if qid is not None:
        match["qid"] = qid
    return mtad.events("delivery", **match)


def wait_delivery(mtad, qid, timeout=10.0, n=1, **match):
    """The event=delivery lines of qid matching match, once there are n."""
    def what():
        return ("%d delivery line(s) qid=%s %r; delivery lines so far:\n%s"
                % (n, qid, match, "\n".join(e["_line"] for e in deliveries(mtad, qid))))
    return wait_until(lambda: (lambda e: e if len(e) >= n else None)(
        deliveries(mtad, qid, **match)), timeout, what)


def rcpt_state(mtad, qid, addr):
    m = mtad.queue().get(qid)
    if m is None:
        return None
    for r in m["recipients"]:
        if r["addr"] == addr:
            return r
    raise AssertionError("no recipient %s in %r" % (addr, m))


def wait_rcpt(mtad, qid, addr, pred=lambda r: r["attempts"] >= 1, timeout=5.0):
    """The recipient's spool record once pred holds (the log line of an
    attempt is written before the new state is committed: poll)."""
    return wait_until(lambda: (lambda r: r if r is not None and pred(r) else None)(
        rcpt_state(mtad, qid, addr)), timeout,
        lambda: "spool state of %s in %s (last: %r)" % (addr, qid, rcpt_state(mtad, qid, addr)))


def wait_gone(mtad, qid, timeout=10.0):
    wait_until(lambda: qid not in mtad.queue(), timeout,
               "qid %s to leave the spool" % qid)
