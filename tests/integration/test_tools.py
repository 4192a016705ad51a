"""Spool tools and the control socket (issue 12): mtactl hold, release,
delete, bounce, flush on real queued mail, mtaq filters and JSON against
the spool, the per-destination summary, policy purge, the tools while
mtad is stopped, and exit codes.  No DNS: the relayhost is an IP literal
sink (as in tests/reliability/test_hostile.py)."""
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lab"))
sys.path.insert(0, os.path.join(HERE, "lib"))

from mtadtest import MTACTL, MTAQ, message  # noqa: E402
from smtpraw import RawSMTP, data_bytes  # noqa: E402
from sinks import sink_lab  # noqa: E402,F401  (fixture)

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


def send(mtad, sender, rcpts, subject="t", mail_params=""):
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo("client.test").code == 250
    r = c.cmd("MAIL FROM:<%s>%s" % (sender, mail_params))
    assert r.code == 250, r
    for rc in rcpts:
        assert c.cmd("RCPT TO:<%s>" % rc).code == 250
    assert c.cmd("DATA").code == 354
    c.send(data_bytes(message(subject)))
    r = c.reply()
    assert r.code == 250, r
    c.quit()
    return r.qid


def ctl(mtad, *args, check=False):
    return mtad.run_tool([MTACTL, "-c", mtad.conf] + list(args), check=check)


def mtaq(mtad, *args):
    p = mtad.run_tool([MTAQ, "-c", mtad.conf, "--json"] + list(args))
    return json.loads(p.stdout)


def relay_to(sink):
    return "[%s]:%d" % (sink.addr, sink.port)


def held_mtad(mtad_factory, sink):
    """mtad whose relayhost is the sink; nothing is delivered while the
    sink refuses (fail_first) - used to build a queue first."""
    return mtad_factory(dict(NODNS, **{
        "delivery.relayhost": relay_to(sink),
        "delivery.min_backoff": "600s"}))


def test_hold_stops_delivery_release_resumes(mtad_factory, sink_lab):
    sink = sink_lab.aio(dsn=True)
    mtad = mtad_factory(dict(NODNS, **{"delivery.relayhost": relay_to(sink)}))
    # queue while the daemon delivers: hold it at once via the socket
    qid = send(mtad, "a@src.test", ["x@dest.test"])
    p = ctl(mtad, "hold", qid)
    if p.returncode != 0:
        # already delivered before the hold: the race is legal but
        # makes the test useless; it must at least say so clearly
        assert b"no such message" in p.stderr, p.stderr
        return
    assert b"held" in p.stdout
    time.sleep(2.0)
    q = mtaq(mtad)
    (m,) = q["messages"]
    assert m["qid"] == qid and m["state"] == "held", m
    assert sink.messages() == [] or all(
        qid not in r.get("data", b"").decode("latin1") for r in sink.messages())
    held = mtaq(mtad, "--state", "held")
    assert [x["qid"] for x in held["messages"]] == [qid]
    (ev,) = mtad.events("control", verb="HOLD")
    assert ev["arg"] == qid and ev["uid"] == str(os.getuid()), ev
    assert ev["pid"] != "-1" and ev["result"] == "ok", ev
    # a second hold: state error, exit 1 with a clear message
    p = ctl(mtad, "hold", qid)
    assert p.returncode == 1 and b"already held" in p.stderr, p.stderr
    p = ctl(mtad, "release", qid)
    assert p.returncode == 0, p.stderr
    sink.wait_messages(1, timeout=20)
    wait_until(lambda: qid not in mtad.queue(), 15, "delivery after release")


def test_filters_delete_bounce_flush(mtad_factory, sink_lab):
    sink = sink_lab.aio(dsn=True, fail_first=1000,
                        fail_reply="451 4.3.0 busy")
    mtad = held_mtad(mtad_factory, sink)
    a = send(mtad, "alice@src.test", ["u1@one.test"])
    b = send(mtad, "bob@src.test", ["u2@two.test", "u3@one.test"])
    c = send(mtad, "carol@other.test", ["u4@two.test"],
             mail_params=" RET=HDRS ENVID=e1")
    # all three get one failed attempt and wait 600 s: deferred
    wait_until(lambda: all(m["state"] == "deferred"
                           for m in mtaq(mtad)["messages"]) and
               len(mtaq(mtad)["messages"]) == 3, 30, "3 deferred")
    by = lambda *args: sorted(m["qid"] for m in mtaq(mtad, *args)["messages"])
    assert by("--domain", "one.test") == sorted([a, b])
    assert by("--domain", "TWO.test") == sorted([b, c])
    assert by("--sender", "@src.test") == sorted([a, b])
    assert by("--sender", "carol@other.test") == [c]
    assert by("--recipient", "u4@two.test") == [c]
    assert by("--reason", "4.3.0") == sorted([a, b, c])
    assert by("--reason", "no-such-text") == []
    assert by("--state", "deferred") == sorted([a, b, c])
    assert by("--state", "queued") == []
    assert by("--older-than", "1h") == []
    assert by("--domain", "one.test", "--sender", "bob@src.test") == [b]
    # JSON matches the spool (mtactl show)
    for m in mtaq(mtad)["messages"]:
        show = ctl(mtad, "show", m["qid"], check=True).stdout.decode()
        assert "sender: <%s>" % m["sender"] in show
        for r in m["recipients"]:
            assert "<%s> state=%s" % (r["addr"], r["state"]) in show
    # per-destination summary
    d = json.loads(mtad.run_tool([MTAQ, "-c", mtad.conf, "--json",
                                  "--destinations"]).stdout)
    rows = {r["destination"]: r for r in d["destinations"]}
    assert rows["one.test"]["total"] == 2 and rows["one.test"]["deferred"] == 2
    assert rows["two.test"]["total"] == 2
    assert rows["one.test"]["oldest_qid"] == a
    # bulk without --yes: count, exit 2, nothing changed
    p = ctl(mtad, "hold", "--domain", "two.test")
    assert p.returncode == 2 and b"2 messages match" in p.stdout, p.stdout
    assert by("--state", "held") == []
    p = ctl(mtad, "hold", "--domain", "two.test", "--yes")
    assert p.returncode == 0 and b"2 of 2 messages held" in p.stdout, p.stdout
    assert by("--state", "held") == sorted([b, c])
    # delete: gone, no DSN
    p = ctl(mtad, "delete", a)
    assert p.returncode == 0, p.stderr
    assert a not in mtad.queue()
    assert mtad.events("dsn") == []
    # bounce: gone, one DSN to the sender queued with the null sender
    p = ctl(mtad, "bounce", c)
    assert p.returncode == 0 and b"dsn=" in p.stdout, p.stdout
    dsn_qid = p.stdout.decode().split("dsn=")[1].split()[0]
    q = mtad.queue()
    assert c not in q and dsn_qid in q
    assert q[dsn_qid]["sender"] == ""
    assert [r["addr"] for r in q[dsn_qid]["recipients"]] == ["carol@other.test"]
    body = mtad.cat(dsn_qid)
    assert b"multipart/report" in body and b"5.0.0" in body
    assert b"ENVID" in body or b"e1" in body
    # flush on a held message is refused; release then flush delivers
    p = ctl(mtad, "flush", b)
    assert p.returncode == 1 and b"held" in p.stderr, p.stderr
    p = ctl(mtad, "release", b)
    assert p.returncode == 0, p.stderr
    assert mtad.queue()[b]["state"] in ("queued", "active", "deferred")


def test_flush_delivers_now(mtad_factory, sink_lab):
    sink = sink_lab.aio(dsn=True, fail_first=1, fail_reply="451 4.3.0 busy")
    mtad = held_mtad(mtad_factory, sink)
    qid = send(mtad, "a@src.test", ["x@dest.test"])
    wait_until(lambda: mtad.queue().get(qid, {}).get("state") == "deferred",
               20, "deferred")
    # backoff is 600 s: only flush can make it go now
    p = ctl(mtad, "flush", qid)
    assert p.returncode == 0, p.stderr
    sink.wait_messages(1, timeout=20)
    wait_until(lambda: qid not in mtad.queue(), 15, "delivered")


def test_stopped_daemon_and_exit_codes(mtad_factory):
    mtad = mtad_factory(NODNS)
    qid = send(mtad, "a@src.test", ["x@dest.test"])
    # bad IDs and filters: exit 2, with what is wrong
    p = ctl(mtad, "hold", "nonsense")
    assert p.returncode == 2 and b"not a queue ID" in p.stderr
    p = ctl(mtad, "show", "nonsense")
    assert p.returncode == 2
    p = mtad.run_tool([MTAQ, "-c", mtad.conf, "--state", "frozen"],
                      check=False)
    assert p.returncode == 2 and b"expected queued" in p.stderr
    p = mtad.run_tool([MTAQ, "-c", mtad.conf, "--older-than", "soon"],
                      check=False)
    assert p.returncode == 2
    p = ctl(mtad, "frobnicate")
    assert p.returncode == 2
    # a well-formed ID that is not queued: 1
    p = ctl(mtad, "hold", "0000000000000000")
    assert p.returncode == 1 and b"no such message" in p.stderr, p.stderr
    p = ctl(mtad, "policy", "purge", "nothing.test")
    assert p.returncode == 1 and b"no cached MTA-STS policy" in p.stderr
    p = ctl(mtad, "stats")
    assert p.returncode == 0 and b"messages 1" in p.stdout, p.stdout
    assert b"uptime" in p.stdout
    # the socket is 0660
    st = os.stat(mtad.settings["control.socket"])
    assert oct(st.st_mode & 0o777) == "0o660"
    mtad.stop()
    # read-only commands work from the spool
    assert list(mtad.queue()) == [qid]
    p = ctl(mtad, "show", qid)
    assert p.returncode == 0 and b"x@dest.test" in p.stdout
    p = ctl(mtad, "cat", qid, "--headers")
    assert p.returncode == 0 and p.stdout.endswith(b"\r\n\r\n")
    assert b"Subject: t" in p.stdout and b"hello" not in p.stdout
    p = ctl(mtad, "stats")
    assert p.returncode == 0 and b"mtad not running" in p.stdout
    p = ctl(mtad, "policy", "list")
    assert p.returncode == 0
    # changes are refused with what to do
    p = ctl(mtad, "hold", qid)
    assert p.returncode == 1 and b"mtad is not running" in p.stderr, p.stderr
    assert b"start it" in p.stderr
    assert list(mtad.queue()) == [qid]


def send_raw(mtad, mail_arg, rcpt_args, content):
    """One transaction with the exact MAIL/RCPT arguments given."""
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo("client.test").code == 250
    # str commands go out as latin-1: send UTF-8 bytes ourselves
    c.send(("MAIL FROM:" + mail_arg + "\r\n").encode())
    r = c.reply()
    assert r.code == 250, r
    for a in rcpt_args:
        c.send(("RCPT TO:" + a + "\r\n").encode())
        r = c.reply()
        assert r.code == 250, r
    assert c.cmd("DATA").code == 354
    c.send(data_bytes(content))
    r = c.reply()
    assert r.code == 250, r
    c.quit()
    return r.qid


def test_evacuate_preserves_envelope_and_keeps_refused(mtad_factory,
                                                       sink_lab):
    """mtactl evacuate (issue 12.5): the queue handed on to another relay
    over SMTP with its envelope byte for byte (null sender, RET, ENVID,
    NOTIFY, ORCPT, SMTPUTF8, BODY=8BITMIME; DSN-03/04 on the evacuating
    side), recipients already delivered not resent, each message removed
    only after the target's 250, a refused one left queued and released."""
    # the relayhost accepts only done@; everything else is deferred 600 s
    first = sink_lab.aio(dsn=True, rcpt_replies={
        "dsn@dest.test": "451 4.2.0 later",
        "later@dest.test": "451 4.2.0 later",
        "refuse@dest.test": "451 4.2.0 later",
        "j\u00f6rg@dest.test": "451 4.2.0 later"})
    mtad = held_mtad(mtad_factory, first)
    m_dsn = send_raw(mtad, "<> RET=HDRS ENVID=env+2Bid.1",
                     ["<dsn@dest.test> NOTIFY=SUCCESS,DELAY "
                      "ORCPT=rfc822;Orig+2BDsn@dest.test"],
                     message("dsn"))
    m_utf = send_raw(mtad, "<s\u00e9nder@src.test> SMTPUTF8 BODY=8BITMIME",
                     ["<j\u00f6rg@dest.test>"],
                     message("utf8", body="gr\u00fc\u00dfe\r\n"))
    m_part = send_raw(mtad, "<p@src.test>",
                      ["<done@dest.test>", "<later@dest.test> NOTIFY=NEVER"],
                      message("partial"))
    m_bad = send_raw(mtad, "<b@src.test>", ["<refuse@dest.test>"],
                     message("refused"))
    qids = [m_dsn, m_utf, m_part, m_bad]
    wait_until(lambda: sorted(mtad.queue()) == sorted(qids) and all(
        m["state"] == "deferred" for m in mtad.queue().values()), 30,
        "4 deferred")
    first_seen = len(first.transactions())
    bodies = {q: mtad.cat(q) for q in qids}
    target = sink_lab.aio(dsn=True, rcpt_replies={
        "refuse@dest.test": "550 5.1.1 no such user here"})
    to = relay_to(target)
    # the count first; nothing happens without --yes
    p = ctl(mtad, "evacuate", "--to", to)
    assert p.returncode == 2 and b"4 messages match" in p.stdout, p.stdout
    assert target.transactions() == [] and sorted(mtad.queue()) == sorted(qids)
    # bad target: usage
    p = ctl(mtad, "evacuate", "--to", "nowhere", "--yes")
    assert p.returncode == 2 and b"HOST:PORT" in p.stderr, p.stderr
    p = ctl(mtad, "evacuate", "--to", to, "--yes")
    out = p.stdout.decode()
    assert p.returncode == 1, (out, p.stderr)
    assert "3 of 4 messages evacuated to %s" % to in out, out
    assert "%s: left queued: <refuse@dest.test>: 550 5.1.1" % m_bad in out, out
    # the refused one stays, released (not held), nothing else
    q = mtad.queue()
    assert list(q) == [m_bad], q
    assert q[m_bad]["state"] != "held", q[m_bad]
    assert mtaq(mtad, "--state", "held")["messages"] == []
    # what the target got, per message (sink records the raw arguments)
    got = {}
    for t in target.messages():
        for q_ in qids:
            if t["data"] == bodies[q_]:
                got[q_] = t
    assert sorted(got) == sorted([m_dsn, m_utf, m_part]), target.messages()
    t = got[m_dsn]
    assert t["mail_from"] in ("", "<>"), t  # aiosmtpd says "<>"
    assert t["mail_args"].startswith("FROM:<> "), t
    assert "RET=HDRS" in t["mail_args"].split()
    assert "ENVID=env+2Bid.1" in t["mail_args"].split()
    assert t["rcpt_args"] == ["TO:<dsn@dest.test> NOTIFY=SUCCESS,DELAY "
                              "ORCPT=rfc822;Orig+2BDsn@dest.test"], t
    t = got[m_utf]
    assert t["mail_from"] == "s\u00e9nder@src.test" and t["smtputf8"], t
    assert "BODY=8BITMIME" in t["mail_args"].split(), t
    assert t["rcpt_tos"] == ["j\u00f6rg@dest.test"], t
    assert "gr\u00fc\u00dfe".encode() in t["data"]
    t = got[m_part]
    # done@ was delivered by the first relay: not resent
    assert t["rcpt_tos"] == ["later@dest.test"], t
    assert t["rcpt_args"] == ["TO:<later@dest.test> NOTIFY=NEVER"], t
    # the refused one was tried and refused at RCPT, never accepted
    refused = [t for t in target.transactions() if t["data"] == bodies[m_bad]]
    assert refused == [], refused
    # each removal is a DELETE through mtad, after the transfer
    dels = sorted(e["arg"] for e in mtad.events("control", verb="DELETE"))
    assert dels == sorted([m_dsn, m_utf, m_part]), dels
    rels = [e["arg"] for e in mtad.events("control", verb="RELEASE")]
    assert rels == [m_bad], rels
    # the scheduler did not deliver anything meanwhile
    assert len(first.transactions()) == first_seen


def test_evacuate_target_down_leaves_queue(mtad_factory, sink_lab):
    """Target unreachable: the one message held for the attempt is
    released, nothing else is touched, exit 1 with the reason."""
    sink = sink_lab.aio(dsn=True, fail_first=1000, fail_reply="451 4.3.0 x")
    mtad = held_mtad(mtad_factory, sink)
    a = send(mtad, "a@src.test", ["x@dest.test"])
    b = send(mtad, "b@src.test", ["y@dest.test"])
    wait_until(lambda: len(mtad.queue()) == 2 and all(
        m["state"] == "deferred" for m in mtad.queue().values()), 30,
        "2 deferred")
    p = ctl(mtad, "evacuate", "--to", "[127.0.0.1]:9", "--yes", a, b)
    assert p.returncode == 1, p.stdout
    assert b"Connection refused" in p.stdout, p.stdout
    assert b"0 of 2 messages evacuated" in p.stdout, p.stdout
    assert sorted(mtad.queue()) == sorted([a, b])
    assert mtaq(mtad, "--state", "held")["messages"] == []
    # mtad stopped: refused with what to do, spool untouched
    mtad.stop()
    p = ctl(mtad, "evacuate", "--to", "[127.0.0.1]:9", "--yes")
    assert p.returncode == 1 and b"mtad is not running" in p.stderr
    assert sorted(mtad.queue()) == sorted([a, b])


def test_socket_group_refuses_outsiders(mtad_factory, tmp_path):
    """Issue 12.1: the control socket is 0660 with control.group: a user in
    that group may talk to mtad, a user outside it is refused by the
    kernel (EACCES) before mtad sees anything."""
    import grp
    import pwd
    import subprocess
    import uuid
    if os.getuid() != 0:
        import pytest
        pytest.skip("needs root to create test users")
    tag = uuid.uuid4().hex[:6]
    group, inside, outside = "mtg" + tag, "mti" + tag, "mto" + tag
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "-M", "-G", group, inside], check=True)
        subprocess.run(["useradd", "-M", outside], check=True)
        import tempfile
        sockdir = tempfile.mkdtemp(prefix="mtctl-", dir="/tmp")
        os.chmod(sockdir, 0o755)  # only the socket's own mode decides
        sock = os.path.join(sockdir, "control.sock")
        mtad = mtad_factory(dict(NODNS, **{"control.socket": sock,
                                          "control.group": group}))
        st = os.stat(sock)
        assert oct(st.st_mode & 0o777) == "0o660"
        assert st.st_gid == grp.getgrnam(group).gr_gid

        def talk(user):
            pw = pwd.getpwnam(user)
            code = ("import socket,sys\n"
                    "s=socket.socket(socket.AF_UNIX)\n"
                    "try:\n s.connect(sys.argv[1])\n"
                    "except PermissionError:\n print('EACCES'); sys.exit(3)\n"
                    "s.sendall(b'MTACTL 1\\nSTATS\\n')\n"
                    "print(s.recv(4096).decode())\n")
            groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]

            def drop():
                os.setgroups(groups)
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
            return subprocess.run(["/usr/bin/python3", "-c", code, sock],
                                  preexec_fn=drop, capture_output=True,
                                  timeout=20)
        p = talk(inside)
        assert p.returncode == 0 and b"OK mtad" in p.stdout, p
        p = talk(outside)
        assert p.returncode == 3 and b"EACCES" in p.stdout, p
        # only the member's session appears in the log
        uids = {e["uid"] for e in mtad.events("control")}
        assert str(pwd.getpwnam(outside).pw_uid) not in uids
    finally:
        for u in (inside, outside):
            subprocess.run(["userdel", u], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)
        import shutil
        if "sockdir" in locals():
            shutil.rmtree(sockdir, ignore_errors=True)


def test_evacuate_500_to_a_second_mtad(mtad_factory):
    """Issue 12.5: 500 queued messages handed on to a second mtad: every
    one arrives exactly once (one unique sender per message), none is left
    behind, and the evacuating spool ends empty."""
    n = 500
    src = mtad_factory(dict(NODNS, **{"delivery.min_backoff": "600s"}))
    dst = mtad_factory(dict(NODNS, **{"delivery.min_backoff": "600s"}))
    c = RawSMTP(src.addr, src.port, timeout=60)
    assert c.greeting().code == 220
    assert c.ehlo("bulk.client.test").code == 250
    for i in range(n):
        r = c.send_message("s%03d@src.test" % i, ["r%03d@dest.test" % i],
                           message("evac %d" % i))
        assert r.code == 250, r
    c.quit()
    wait_until(lambda: src.mtaq()["count"] == n, 60, "%d queued" % n)
    p = src.run_tool([MTACTL, "-c", src.conf, "evacuate", "--to",
                      "[%s]:%d" % (dst.addr, dst.port), "--yes"],
                     check=False, timeout=900)
    out = p.stdout.decode()
    assert p.returncode == 0, (out[-2000:], p.stderr[-2000:])
    assert "%d of %d messages evacuated" % (n, n) in out, out[-2000:]
    assert src.mtaq()["count"] == 0
    got = dst.mtaq()["messages"]
    senders = sorted(m["sender"] for m in got)
    assert senders == ["s%03d@src.test" % i for i in range(n)], (
        "lost or duplicated: %d messages at the target" % len(got))
    for m in got:
        i = m["sender"][1:4]
        assert [r["addr"] for r in m["recipients"]] == ["r%s@dest.test" % i], m
