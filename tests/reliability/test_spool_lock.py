"""One daemon per spool (issue 9 item 2): a second mtad on the same
spool.dir exits 1 naming the PID that holds the lock; the first keeps
running and accepting mail; mtaq and mtactl work beside it."""
import re
import time

from mtadtest import MTACTL, message
from smtpraw import RawSMTP


def _send(m, sender):
    c = RawSMTP(m.addr, m.port)
    assert c.greeting().code == 220
    assert c.ehlo("lock.client.test").code == 250
    r = c.send_message(sender, ["rcpt@example.org"], message("lock"))
    c.quit()
    return r


def _wait_exit(m, timeout=10.0):
    deadline = time.monotonic() + timeout
    while m.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return m.proc.poll()


def test_second_mtad_on_same_spool_refused(mtad_factory):
    first = mtad_factory()
    r1 = _send(first, "one@client.test")
    assert r1.code == 250 and r1.qid, r1

    # Its own address, ports and control socket: only the spool is shared,
    # so nothing but the lock can stop it.
    second = mtad_factory({"spool.dir": first.spool}, start=False)
    second.start(wait_ready=False)
    rc = _wait_exit(second)
    assert rc == 1, "second mtad on the same spool: exit %r\n%s" % (
        rc, second.log_tail())
    log = second.log_text()
    assert re.search(r"in use by another mtad \(pid %d\b" % first.pid, log), log
    ev = second.events("spool_locked")
    assert ev and ev[0]["holder_pid"] == str(first.pid), log
    assert not second.events("ready"), log
    with open(first.spool + "/mtad.lock") as f:
        assert f.read().strip() == str(first.pid)

    # the first is unharmed: still running, still accepting
    assert first.alive()
    r2 = _send(first, "two@client.test")
    assert r2.code == 250 and r2.qid, r2
    # the tools work beside the running daemon
    q = first.queue()
    assert set(q) == {r1.qid, r2.qid}, q
    p = first.run_tool([MTACTL, "-c", first.conf, "show", r2.qid])
    assert b"two@client.test" in p.stdout, p.stdout
    assert first.cat(r1.qid).endswith(message("lock"))

    # once the first is gone, the lock is free: the second starts and
    # finds both messages
    assert first.stop() == 0
    second.start()
    assert set(second.queue()) == {r1.qid, r2.qid}
    with open(first.spool + "/mtad.lock") as f:
        assert f.read().strip() == str(second.pid)
