"""server.threads: inbound SMTP on N loop threads, each with its own
SO_REUSEPORT sockets (issue 15, item 3).  The sessions of all threads share
the limits (server.max_sessions_per_client, SRV-17 family), every message
answered 250 is in the spool, SIGTERM drains every thread (SRV-16), and
server.threads = 1 keeps one loop."""
import http.client
import signal
import socket
import time

import pytest

from mtadtest import message, write_config
from smtpraw import RawSMTP


def threads_of(mtad, event="connect"):
    return {e.get("thread") for e in mtad.events(event)}


def metrics(mtad):
    c = http.client.HTTPConnection(mtad.addr, mtad.http_port, timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def open_many(mtad, n):
    conns = [RawSMTP(mtad.addr, mtad.port, timeout=20) for _ in range(n)]
    for c in conns:
        assert c.greeting().code == 220
    return conns


@pytest.mark.parametrize("threads", [2, 4])
def test_threads_spread_every_250_spooled(mtad_factory, threads):
    """N threads: 40 concurrent sessions land on more than one thread (the
    connect lines say thread=), each sends two messages, every one
    answered 250 is in the spool under its queue id, the ids are unique,
    and /metrics counts every session and message of every thread."""
    mtad = mtad_factory({"server.threads": threads})
    ready = mtad.events("ready")
    assert ready and ready[-1].get("threads") == str(threads), ready
    conns = open_many(mtad, 40)
    qids = []
    for i, c in enumerate(conns):
        assert c.ehlo().code == 250
    for rnd in range(2):
        for i, c in enumerate(conns):
            r = c.send_message("a%d@client.test" % i, ["b%d@example.org" % i],
                               message(subject="t%d-%d" % (i, rnd)))
            assert r.code == 250, r
            qids.append(r.qid)
    for c in conns:
        assert c.quit().code == 221
    seen = threads_of(mtad)
    assert len(seen) > 1, seen
    assert seen <= {str(t) for t in range(threads)}, seen
    assert len(set(qids)) == len(qids) == 80
    q = mtad.queue()
    assert set(qids) <= set(q), set(qids) - set(q)
    sids = [e["sid"] for e in mtad.events("connect")]
    assert len(set(sids)) == len(sids) == 40
    deadline = time.monotonic() + 5
    while True:
        m = metrics(mtad)
        if m.get("mtad_sessions_open") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert m["mtad_sessions_total"] == 40, m
    assert m["mtad_sessions_open"] == 0, m
    assert m["mtad_messages_accepted_total"] == 80, m


def test_threads_per_client_limit_across_threads(mtad_factory):
    """server.max_sessions_per_client = 3 with 2 threads: of 12 concurrent
    connections from one address, spread over both threads, exactly 3 are
    greeted and the other 9 get 421 4.7.0 and are closed."""
    mtad = mtad_factory({"server.threads": 2,
                         "server.max_sessions_per_client": 3})
    held, refused = [], 0
    for _ in range(12):
        c = RawSMTP(mtad.addr, mtad.port)
        r = c.reply()
        if r.code == 220:
            held.append(c)
        else:
            assert r.code == 421 and r.dsn == "4.7.0", r
            assert c.wait_closed(5)
            c.close()
            refused += 1
    assert len(held) == 3 and refused == 9, (len(held), refused)
    assert len(threads_of(mtad)) == 2, threads_of(mtad)
    rej = mtad.events("reject", verb="CONNECT")
    assert len(rej) == 9 and all(e["dsn"] == "4.7.0" for e in rej), rej
    for c in held:
        assert c.ehlo().code == 250
        c.quit()


def test_threads_sigterm_drains_every_thread(mtad_factory):
    """SIGTERM with 2 threads (SRV-16): once event=shutdown is logged new
    connections are refused; idle sessions on both threads get
    421 4.3.2 at once; one in DATA on each thread finishes its message
    (250, in the spool after exit), then gets 421; mtad exits 0."""
    mtad = mtad_factory({"server.threads": 2, "server.shutdown_grace": "10s"})
    conns = open_many(mtad, 16)
    for c in conns:
        assert c.ehlo().code == 250
    by_thread = {}
    sids = [e for e in mtad.events("connect")]
    assert len(sids) == 16
    # connect lines come in accept order, our sockets in connect order:
    # match them by client port
    ports = {int(e["port"]): e["thread"] for e in sids}
    for c in conns:
        by_thread.setdefault(ports[c.sock.getsockname()[1]], []).append(c)
    assert len(by_thread) == 2, by_thread.keys()
    busy = [v[0] for v in by_thread.values()]
    idle = [c for v in by_thread.values() for c in v[1:]]
    for b in busy:
        assert b.cmd("MAIL FROM:<a@client.test>").code == 250
        assert b.cmd("RCPT TO:<b@example.org>").code == 250
        assert b.cmd("DATA").code == 354
    mtad.signal(signal.SIGTERM)
    assert mtad.wait_event("shutdown", timeout=5)
    # logged once no thread accepts: every new connection is refused
    # (SO_REUSEPORT would hand it to any socket still listening)
    for _ in range(8):
        with pytest.raises(OSError):
            socket.create_connection((mtad.addr, mtad.port), timeout=2).close()
    for c in idle:
        r = c.reply()
        assert r.code == 421 and r.dsn == "4.3.2", r
        assert c.wait_closed(5)
    qids = []
    for b in busy:
        b.send(b"Subject: drain\r\n\r\nbody\r\n.\r\n")
        r = b.reply()
        assert r.code == 250, r
        qids.append(r.qid)
        r = b.reply()
        assert r.code == 421 and r.dsn == "4.3.2", r
        assert b.wait_closed(5)
    rc = mtad.proc.wait(15)
    assert rc == 0, mtad.log_tail()
    assert set(qids) <= set(mtad.queue())


def test_threads_reload_reaches_every_thread(mtad_factory):
    """SIGHUP with 2 threads: server.threads itself is not reloadable
    (reload_not_live), the reload goes through, and afterwards new
    sessions on both threads (and no third) are served and their mail is
    spooled."""
    mtad = mtad_factory({"server.threads": 2})
    mtad.settings["server.threads"] = 4
    write_config(mtad.conf, mtad.settings)
    mtad.signal(signal.SIGHUP)
    assert mtad.wait_event("reloaded", timeout=10), mtad.log_tail()
    assert mtad.events("reload_not_live", key="server.threads")
    before = len(mtad.events("connect"))
    conns = open_many(mtad, 16)
    qids = []
    for c in conns:
        assert c.ehlo().code == 250
        r = c.send_message("a@client.test", ["b@example.org"], message())
        assert r.code == 250, r
        qids.append(r.qid)
        c.quit()
    after = mtad.events("connect")[before:]
    assert {e["thread"] for e in after} == {"0", "1"}
    assert set(qids) <= set(mtad.queue())
    assert mtad.alive()


def test_threads_one_is_one_loop(mtad_factory):
    """server.threads = 1: ready says threads=1, every session is on
    thread 0 and works as before."""
    mtad = mtad_factory({"server.threads": 1})
    assert mtad.events("ready")[-1].get("threads") == "1"
    conns = open_many(mtad, 6)
    for c in conns:
        assert c.ehlo().code == 250
        r = c.send_message("a@client.test", ["b@example.org"], message())
        assert r.code == 250, r
        c.quit()
    assert threads_of(mtad) == {"0"}
    assert len(mtad.queue()) == 6


def test_threads_auth_failures_shared(mtad_factory, tmp_path):
    """auth.max_failures = 3 with 2 threads: after 3 failed AUTH from one
    address (one per connection, wherever they landed), every later AUTH
    from that address gets 421 4.7.0 even with the right password, on
    connections that reach both threads: the failure table is shared."""
    import base64
    import os
    import subprocess

    import mtadtest
    from mtadtest import alloc_addr, clean_env, free_port

    pw = "s3cret pass"
    users = os.path.join(str(tmp_path), "users")
    r = subprocess.run([os.path.join(mtadtest.BUILD_DIR, "mtactl"), "passwd",
                        "alice", "--file", users], input=(pw + "\n").encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=clean_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    mtadtest.give_group_read(users)
    addr = alloc_addr()
    port = free_port(addr)
    m = mtad_factory({"server.threads": 2, "server.relay_networks": "127.0.0.1/32",
                      "submission.listen": "%s:%d" % (addr, port),
                      "auth.users_file": users, "auth.failure_delay": "0s",
                      "auth.max_failures": "3"})
    src = alloc_addr()

    def session():
        c = RawSMTP(addr, port, source=src)
        assert c.greeting().code == 220
        assert c.ehlo("app.test").code == 250
        assert c.starttls().code == 220
        assert "AUTH" in c.ehlo("app.test").text
        return c

    def b64(s):
        return base64.b64encode(s.encode()).decode()

    for _ in range(3):
        c = session()
        assert c.cmd("AUTH PLAIN " + b64("\0alice\0nope")).code == 535
        c.quit()
    limited_on = set()
    for _ in range(10):
        c = session()
        port_c = c.sock.getsockname()[1]
        r = c.cmd("AUTH PLAIN " + b64("\0alice\0" + pw))
        assert r.code == 421 and r.dsn == "4.7.0", r
        ev = [e for e in m.events("connect") if e["port"] == str(port_c)]
        limited_on.add(ev[-1]["thread"])
        c.close()
    assert limited_on == {"0", "1"}, limited_on
    assert len([e for e in m.events("auth") if e.get("result") == "limit"]) == 10


def test_threads_second_mtad_on_same_port_refused(mtad_factory):
    """SO_REUSEPORT must not let a second mtad (same user, another spool)
    share the port of a running one: it fails with event=listen_failed
    (EADDRINUSE) and exit 1, and the first keeps every connection."""
    first = mtad_factory({"server.threads": 2})
    second = mtad_factory({"server.threads": 2,
                           "server.listen": "%s:%d" % (first.addr, first.port)},
                          start=False)
    second.start(wait_ready=False)
    rc = second.proc.wait(15)
    second.exit_codes.append(rc)
    assert rc == 1, second.log_tail()
    ev = second.events("listen_failed")
    assert ev and ev[0]["addr"] == "%s:%d" % (first.addr, first.port), second.log_tail()
    assert "in use" in ev[0]["error"], ev
    conns = open_many(first, 8)
    for c in conns:
        c.quit()
    assert len(first.events("connect")) == 8
