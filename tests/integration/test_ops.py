"""Operations (issue 13 items 2 and 3): the HTTP endpoint (/healthz,
/readyz, /metrics checked by promtool), SIGTERM drain within
server.shutdown_grace, SIGHUP reload (good config, broken config, renewed
certificate served by the next STARTTLS).  Every test asserts what the
endpoint answered, what the spool holds, what arrived and what was logged."""
import http.client
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lab"))
sys.path.insert(0, os.path.join(HERE, "lib"))

import dnslab  # noqa: E402
import mtadtest  # noqa: E402
from mtadtest import message  # noqa: E402
from sinks import self_signed, sink_lab  # noqa: E402,F401  (fixture)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# No DNS: the relayhost is an IP literal, the self-test fails at once.
NODNS = {"dns.resolver": "127.0.0.1:9", "dns.timeout": "1s"}


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.1)


def get(mtad, path, method="GET"):
    c = http.client.HTTPConnection(mtad.addr, mtad.http_port, timeout=10)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()


def parse_metrics(text):
    """{'name{labels}': float} from the text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def promtool_check(text):
    if not os.access(PROMTOOL, os.X_OK):
        pytest.fail("promtool missing: install Debian's prometheus (make deps)")
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()
    # promtool prints lint problems (and exits 0 for some): none expected
    assert p.stdout.strip() == b"" and p.stderr.strip() == b"", \
        (p.stdout + p.stderr).decode()


def free_port_triple(addr):
    """A port p with p, p+1, p+2 free on addr (UDP and TCP): the lab's
    unbound, knotd and responder."""
    import random
    for _ in range(200):
        base = random.randrange(20000, 60000)
        try:
            socks = []
            for p in (base, base + 1, base + 2):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind((addr, p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no free ports")


def relay_to(sink):
    return "[%s]:%d" % (sink.addr, sink.port)


# ---------------------------------------------------------------------------
# HTTP endpoint

def test_http_endpoint_routes_and_refusals(mtad_factory):
    """/healthz 200; /readyz 503 naming the failing check (no DNS here);
    unknown path 404; a method other than GET 405; garbage 400; an
    oversized head 431 -- and the daemon keeps serving."""
    mtad = mtad_factory(NODNS)
    st, ctype, body = get(mtad, "/healthz")
    assert (st, body) == (200, "ok\n")
    st, _, body = wait_until(
        lambda: (lambda r: r if "dnssec: self-test failing" in r[2] else None)(
            get(mtad, "/readyz")), 10, "self-test verdict")
    assert st == 503
    assert "spool" not in body and "listeners" not in body, body
    assert get(mtad, "/nope")[0] == 404
    assert get(mtad, "/metrics", method="POST")[0] == 405
    s = socket.create_connection((mtad.addr, mtad.http_port), timeout=5)
    s.sendall(b"GARBAGE\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    s.close()
    s = socket.create_connection((mtad.addr, mtad.http_port), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: aaaaaaaaaa\r\n" * 800)
    assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    s.close()
    assert get(mtad, "/healthz")[0] == 200
    assert mtad.alive()


def test_readyz_goes_503_to_200_when_dnssec_selftest_passes(mtad_factory):
    """/readyz is 503 with the DNSSEC reason while the resolver does not
    answer, and turns 200 once it does (the self-test is retried every few
    seconds while failing); mtad_dnssec_selftest follows."""
    for tool in (dnslab.KNOTD, dnslab.UNBOUND, dnslab.SIGNZONE):
        if not os.access(tool, os.X_OK):
            pytest.skip("%s missing (Debian knot, unbound, ldnsutils)" % tool)
    addr = os.environ.get("DNSLAB_ADDR", "127.0.53.1")
    lab = None
    for attempt in range(6):   # the lab's addresses may be in use by a parallel run
        port = free_port_triple(addr)
        lab = dnslab.DnsLab(addr, port)
        try:
            lab.start()
            break
        except Exception:
            lab.stop()
            lab = None
            time.sleep(10)
    if lab is None:
        pytest.fail("the DNS lab did not start")
    try:
        # the resolver goes away: the lab's keys and anchor stay
        p = lab.procs.pop("unbound")
        os.kill(p.pid, signal.SIGTERM)
        p.wait(10)
        mtad = mtad_factory({"dns.resolver": lab.resolver,
                             "dns.trust_anchor": lab.trust_anchor,
                             "dns.timeout": "1s"})
        st, _, body = wait_until(
            lambda: (lambda r: r if "dnssec" in r[2] else None)(get(mtad, "/readyz")),
            15, "a failing self-test")
        assert st == 503 and "dnssec: self-test" in body, body
        assert parse_metrics(get(mtad, "/metrics")[2])["mtad_dnssec_selftest"] in (0, -1)
        # the resolver comes (back)
        lab._spawn("unbound", [dnslab.UNBOUND, "-d", "-c", lab._unbound_conf])
        lab._wait_dns(lab.port, "unbound")
        st, _, body = wait_until(
            lambda: (lambda r: r if r[0] == 200 else None)(get(mtad, "/readyz")),
            30, "/readyz 200")
        assert body == "ready\n"
        m = parse_metrics(get(mtad, "/metrics")[2])
        assert m["mtad_dnssec_selftest"] == 1 and m["mtad_ready"] == 1
        assert mtad.events("dnssec_selftest", status="ok")
    finally:
        lab.stop()


def test_metrics_after_known_workload(mtad_factory, sink_lab):
    """8 messages (null sender, so no DSN): 5 sent, 2 deferred (451 4.2.0),
    1 bounced (550 5.1.1); one command refused.  /metrics shows those
    counts, the 2 deferred messages queued, commits and their fsync
    histogram, and passes `promtool check metrics`."""
    replies = {"d1@sink.test": "451 4.2.0 mailbox busy",
               "d2@sink.test": "451 4.2.0 mailbox busy",
               "b1@sink.test": "550 5.1.1 no such user"}
    sink = sink_lab.aio(rcpt_replies=replies)
    mtad = mtad_factory(dict(NODNS, **{"delivery.relayhost": relay_to(sink)}))
    rcpts = ["s%d@sink.test" % i for i in range(1, 6)] + list(replies)
    c = smtplib.SMTP(mtad.addr, mtad.port, timeout=20)
    c.ehlo("app.test")
    for r in rcpts:
        c.sendmail("", [r], message("m " + r))
    code, _ = c.docmd("MAIL FROM:<bad address>")   # refused: 5.5.x / 5.1.x
    assert code >= 500
    c.quit()
    wait_until(lambda: len(sink.messages()) >= 5, 30, "5 deliveries")
    wait_until(lambda: len(mtad.events("delivery")) >= 8, 30, "8 outcomes")
    wait_until(lambda: len(mtad.queue()) == 2, 20, "2 deferred left")

    st, ctype, text = get(mtad, "/metrics")
    assert st == 200 and ctype.startswith("text/plain; version=0.0.4"), ctype
    promtool_check(text)
    m = parse_metrics(text)
    assert m["mtad_messages_accepted_total"] == 8
    assert m["mtad_sessions_total"] == 1
    assert m['mtad_deliveries_total{status="sent",auth="none"}'] == 5
    assert m['mtad_deliveries_total{status="deferred",auth="none"}'] == 2
    assert m['mtad_deliveries_total{status="bounced",auth="none"}'] == 1
    assert sum(v for k, v in m.items()
               if k.startswith("mtad_deliveries_total{") and 'auth="none"' not in k) == 0
    assert m['mtad_deferrals_total{reason="4.2.0"}'] == 2
    assert sum(v for k, v in m.items() if k.startswith("mtad_messages_rejected_total")) == 1
    assert m['mtad_queue_messages{state="queued"}'] == 2
    assert m['mtad_queue_messages{state="held"}'] == 0
    assert m["mtad_queue_recipients"] == 2
    assert m["mtad_queue_oldest_age_seconds"] > 0
    assert m["mtad_spool_commits_total"] >= 9   # 8 messages + outcomes
    assert m["mtad_spool_fsync_seconds_count"] == m["mtad_spool_commits_total"]
    assert m['mtad_spool_fsync_seconds_bucket{le="+Inf"}'] == m["mtad_spool_fsync_seconds_count"]
    assert 0 < m["mtad_spool_map_used_bytes"] < m["mtad_spool_map_size_bytes"]
    assert m["mtad_spool_corrupt"] == 0
    assert m["mtad_dnssec_selftest"] in (0, -1)   # no DNS here
    assert m["mtad_sessions_open"] == 0


# ---------------------------------------------------------------------------
# SIGTERM

def test_sigterm_drains_20_sessions_within_grace(mtad_factory):
    """20 sessions open: 10 idle, 10 in a transaction (MAIL and RCPT given).
    SIGTERM: new connections are refused, idle sessions get 421 4.3.2, each
    transaction in flight may finish (its message gets 250 and is in the
    spool) -- except 2 that never send DATA, closed with 421 when
    server.shutdown_grace (3s) is over.  Exit 0, within the grace."""
    grace = 3
    mtad = mtad_factory(dict(NODNS, **{"server.shutdown_grace": "%ds" % grace}))
    idle, busy = [], []
    for i in range(10):
        c = smtplib.SMTP(mtad.addr, mtad.port, timeout=20)
        c.ehlo("idle%d.test" % i)
        idle.append(c)
    for i in range(10):
        c = smtplib.SMTP(mtad.addr, mtad.port, timeout=20)
        c.ehlo("busy%d.test" % i)
        assert c.mail("app@busy.test")[0] == 250
        assert c.rcpt("r%d@example.net" % i)[0] == 250
        busy.append(c)
    t0 = time.monotonic()
    mtad.signal(signal.SIGTERM)
    wait_until(lambda: mtad.events("shutdown"), 5, "event=shutdown")
    with pytest.raises(OSError):
        socket.create_connection((mtad.addr, mtad.port), timeout=2).close()
    for c in idle:
        code, text = c.getreply()   # the unsolicited 421
        assert code == 421 and b"4.3.2" in text, (code, text)
    got = {}
    lock = threading.Lock()

    def finish(i, c):
        code, resp = c.data(message("drain %d" % i))
        m = re.search(rb"queued as (\S+)", resp)
        with lock:
            got[i] = (code, m.group(1).decode() if m else None)
        try:
            code2, _ = c.getreply()
            with lock:
                got[i] = got[i] + (code2,)
        except smtplib.SMTPServerDisconnected:
            pass

    threads = [threading.Thread(target=finish, args=(i, c)) for i, c in enumerate(busy[:8])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    # the last two never finish: the grace ends them
    for c in busy[8:]:
        code, text = c.getreply()
        assert code == 421 and b"4.3.2" in text, (code, text)
    rc = mtad.proc.wait(grace + 10)
    elapsed = time.monotonic() - t0
    assert rc == 0, mtad.log_tail()
    assert elapsed < grace + 2, elapsed
    assert len(got) == 8 and all(v[0] == 250 for v in got.values()), got
    assert all(len(v) == 3 and v[2] == 421 for v in got.values()), got
    mtad.exit_codes.append(rc)
    q = mtad.queue()
    assert sorted(q) == sorted(v[1] for v in got.values()), (q.keys(), got)
    assert mtad.events("shutdown_grace_over")
    assert len(mtad.events("disconnect", reason="shutdown_grace_over")) == 2


# ---------------------------------------------------------------------------
# SIGHUP

def _starttls_cert(mtad):
    c = smtplib.SMTP(mtad.addr, mtad.port, timeout=20)
    c.ehlo("tls.test")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.starttls(context=ctx)
    der = c.sock.getpeercert(binary_form=True)
    c.quit()
    return der


def test_sighup_good_broken_config_and_renewed_certificate(mtad_factory, tmp_path):
    """A good new config applies (log.level, a changed max_message_size seen
    by new sessions; a session open across the reload keeps its snapshot);
    a not-live key (server.listen) is reported; a broken config is refused
    with a log line and the old one stays; a renewed certificate at the same
    path is what the next STARTTLS serves."""
    first = self_signed(["mx1.ops.test"])
    cert, key = first.write(str(tmp_path), name="server")
    mtad = mtad_factory(dict(NODNS, **{"server.tls_cert": cert,
                                       "server.tls_key": key,
                                       "server.max_message_size": "100k"}),
                        tls=False)
    assert _starttls_cert(mtad) == first.der()
    old_session = smtplib.SMTP(mtad.addr, mtad.port, timeout=20)
    old_session.ehlo("old.test")
    assert old_session.esmtp_features["size"] == str(100 * 1024)

    # good config, renewed certificate, a not-live key
    second = self_signed(["mx2.ops.test"])
    second.write(str(tmp_path), name="server")
    s = dict(mtad.settings)
    s["server.max_message_size"] = "200k"
    s["log.level"] = "debug"
    s["server.listen"] = "%s:%d" % (mtad.addr, mtad.port + 1)
    mtadtest.write_config(mtad.conf, s)
    mtad.signal(signal.SIGHUP)
    wait_until(lambda: mtad.events("reloaded"), 10, "event=reloaded")
    assert mtad.events("reload_not_live", key="server.listen")
    assert mtad.events("reloaded")[-1]["not_live"] == "1"
    assert _starttls_cert(mtad) == second.der()
    new_session = smtplib.SMTP(mtad.addr, mtad.port, timeout=20)
    new_session.ehlo("new.test")
    assert new_session.esmtp_features["size"] == str(200 * 1024)
    # the session of before keeps its snapshot and is not dropped
    assert old_session.noop()[0] == 250
    old_session.ehlo("old-again.test")
    assert old_session.esmtp_features["size"] == str(100 * 1024)
    assert mtad.events("smtpd_state")   # log.level debug applies
    old_session.sendmail("a@ops.test", ["b@example.net"], message("across reload"))
    old_session.quit()
    new_session.quit()

    # broken configs: a syntax error; a certificate that does not load
    n_reloaded = len(mtad.events("reloaded"))
    with open(mtad.conf, "a") as f:
        f.write("this is not ini\n")
    mtad.signal(signal.SIGHUP)
    ev = wait_until(lambda: mtad.events("reload_failed"), 10, "reload_failed")
    assert "syntax error" in ev[-1]["error"], ev
    s["server.tls_cert"] = str(tmp_path / "missing.pem")
    mtadtest.write_config(mtad.conf, s)
    mtad.signal(signal.SIGHUP)
    wait_until(lambda: len(mtad.events("reload_failed")) >= 2, 10, "2nd reload_failed")
    assert len(mtad.events("reloaded")) == n_reloaded
    assert mtad.alive()
    assert _starttls_cert(mtad) == second.der()     # old generation in force
    c = smtplib.SMTP(mtad.addr, mtad.port, timeout=20)
    c.ehlo("after.test")
    assert c.esmtp_features["size"] == str(200 * 1024)
    c.quit()
    assert len(mtad.queue()) == 1
    assert mtad.stop() == 0
