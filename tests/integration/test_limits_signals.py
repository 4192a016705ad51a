"""Session limits and timeouts (server.max_sessions, SRV-17), shutdown
(SRV-16)."""
import signal
import time

from mtadtest import parse_duration, parse_ini
from smtpraw import RawSMTP


def test_max_sessions_third_connection_refused(mtad_factory):
    """server.max_sessions = 2: the third concurrent connection gets
    421 4.7.0 and is closed; the first two keep working; once one of them
    leaves, a new connection is served again."""
    mtad = mtad_factory({"server.max_sessions": 2})
    a = RawSMTP(mtad.addr, mtad.port)
    b = RawSMTP(mtad.addr, mtad.port)
    assert a.greeting().code == 220
    assert b.greeting().code == 220
    c = RawSMTP(mtad.addr, mtad.port)
    r = c.reply()
    assert r.code == 421 and r.dsn == "4.7.0", r
    assert c.wait_closed(5), "421 4.7.0 but the connection stays open"
    c.close()
    assert a.ehlo().code == 250
    assert b.cmd("NOOP").code == 250
    assert a.quit().code == 221
    r = None
    for _ in range(50):  # the slot is freed when mtad sees the close
        d = RawSMTP(mtad.addr, mtad.port)
        r = d.reply()
        d.close()
        if r.code == 220:
            break
        time.sleep(0.1)
    assert r.code == 220, r
    b.quit()


def test_command_timeout_421(mtad_factory):
    """server.command_timeout = 2s: an idle session gets 421 4.4.2 and is
    closed, not before the timeout; the log has a disconnect for it."""
    mtad = mtad_factory({"server.command_timeout": "2s"})
    c = RawSMTP(mtad.addr, mtad.port, timeout=15)
    t0 = time.monotonic()
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    r = c.reply()
    waited = time.monotonic() - t0
    assert r.code == 421 and r.dsn == "4.4.2", r
    assert 1.5 <= waited <= 8, waited
    assert c.wait_closed(5)
    assert mtad.wait_event("disconnect")
    assert mtad.alive()


def test_srv17_default_command_timeout_at_least_5min(mtad_factory):
    """SRV-17: the default command timeout is >= 5 minutes (300s) as shown
    by --check-config; data_timeout likewise."""
    mtad = mtad_factory(start=False)
    p = mtad.check_config()
    assert p.returncode == 0, p.stderr
    cfg = parse_ini(p.stdout.decode())
    assert parse_duration(cfg["server"]["command_timeout"]) == 300, cfg["server"]
    assert parse_duration(cfg["server"]["data_timeout"]) >= 300, cfg["server"]


def test_srv16_sigterm_421_then_exit0(mtad_factory):
    """SRV-16: SIGTERM while clients are connected (one idle, one inside a
    transaction): the idle one reads 421 4.3.2 at once; the one in a
    transaction may finish it within server.shutdown_grace (issue 13) and,
    as it does not, reads 421 4.3.2 when the grace (2s) is over; both see
    the close; mtad exits 0."""
    mtad = mtad_factory({"server.shutdown_grace": "2s"})
    idle = RawSMTP(mtad.addr, mtad.port)
    assert idle.greeting().code == 220
    busy = RawSMTP(mtad.addr, mtad.port)
    assert busy.greeting().code == 220
    assert busy.ehlo().code == 250
    assert busy.cmd("MAIL FROM:<a@client.test>").code == 250
    assert busy.cmd("RCPT TO:<b@example.org>").code == 250
    t0 = time.monotonic()
    mtad.signal(signal.SIGTERM)
    for c in (idle, busy):
        r = c.reply()
        assert r.code == 421 and r.dsn == "4.3.2", r
        assert c.wait_closed(5)
    assert time.monotonic() - t0 >= 1.5   # busy waited for the grace
    rc = mtad.proc.wait(10)
    assert rc == 0, mtad.log_tail()
    assert mtad.queue() == {}
