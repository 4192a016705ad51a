"""Routing and traffic shaping (issue 14): delivery.routes_file,
delivery.shaping_file, per-route source address and HELO, against the DNS
lab (tests/lab/dnslab.py) and the lab's sinks (tests/lab/sinks.py).

Every test domain gets MX -> mx.<name>.s.test. -> a fresh 127.1.X.Y address
in the signed zone s.test. at module start; "relay" hosts are address
literals (no DNS) or names with A records only.  Each test writes its own
routes/shaping file.

Conformance: DANE-05 (a dane-only hop without usable TLSA gets no
connection), RFC 3463 4.7.x throttling replies.
"""
import email
import email.policy
import signal
import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

import delivlab  # noqa: E402
import sinks  # noqa: E402
from delivlab import msg, submit, wait_until, deliveries  # noqa: E402
from sinks import sink_lab  # noqa: E402,F401  (fixture)

SENDER = "alice@client.test"
DOMAINS = ["mx", "rel", "snd", "fb", "bind", "helo", "rate", "conc", "thr",
           "dro", "refu", "hold", "dsn"]


class Lab:
    def __init__(self, dns):
        self.dns = dns
        self.addr = {}
        lines = []
        for name in DOMAINS:
            dom = "%s.rt.s.test" % name
            a = self.addr[name] = sinks.alloc_addr()
            lines.append("mx.%s. 60 IN A %s" % (dom, a))
            lines.append("%s. 60 IN MX 10 mx.%s." % (dom, dom))
        # relays: literal addresses; "dro" relay is a name without TLSA
        for name in ("relay1", "relay2", "fbrelay", "drorelay", "src"):
            self.addr[name] = sinks.alloc_addr()
        lines.append("relay.dro.rt.s.test. 60 IN A %s" % self.addr["drorelay"])
        dns.add_zone_records("s.test.", lines)


@pytest.fixture(scope="module")
def lab():
    missing = delivlab.lab_tools_missing()
    if missing:
        pytest.skip("%s missing (Debian knot, unbound, ldnsutils)" % missing)
    dns = delivlab.start_dns_lab()
    try:
        yield Lab(dns)
    finally:
        dns.stop()


@pytest.fixture
def env(lab, sink_lab, mtad_factory, tmp_path):
    class Env:
        pass
    e = Env()
    e.lab, e.sl, e.tmp = lab, sink_lab, tmp_path
    e.port = delivlab.choose_port(list(lab.addr.values()))

    def start(routes=None, shaping=None, **extra):
        s = delivlab.mtad_settings(lab.dns, e.port, **extra)
        if routes is not None:
            p = tmp_path / "routes"
            p.write_text(routes)
            s["delivery.routes_file"] = str(p)
        if shaping is not None:
            p = tmp_path / "shaping"
            p.write_text(shaping)
            s["delivery.shaping_file"] = str(p)
        e.mtad = mtad_factory(settings=s)
        return e.mtad

    def aio(key, **kw):
        return sink_lab.aio(addr=lab.addr[key], port=e.port, **kw)
    e.start, e.aio = start, aio
    return e


def lit(env, key):
    return "[%s]:%d" % (env.lab.addr[key], env.port)


def test_each_route_kind_goes_where_it_says(env):
    mx = env.aio("mx")
    rel_mx = env.aio("rel")     # the MX of rel: must get nothing
    relay1 = env.aio("relay1")
    m = env.start(routes=(
        "# comment\n"
        "rel.rt.s.test relay %s level=may\n"
        "refu.rt.s.test refuse \"5.7.1 no mail for refu, ask the postmaster\"\n"
        "hold.rt.s.test hold\n"
        "* mx\n") % lit(env, "relay1"))
    q1 = submit(m, SENDER, ["a@mx.rt.s.test"], msg("to-mx"))
    q2 = submit(m, SENDER, ["b@rel.rt.s.test", "c@rel.rt.s.test"], msg("to-rel"))
    q3 = submit(m, SENDER, ["d@refu.rt.s.test"], msg("to-refu"))
    q4 = submit(m, SENDER, ["e@hold.rt.s.test"], msg("to-hold"))
    mx.wait_messages(1)
    relay1.wait_messages(1)
    (ev,) = delivlab.wait_delivery(m, q3, status="bounced")
    assert ev["dsn"] == "5.7.1", ev
    assert "no mail for refu" in ev["response"], ev
    (ev,) = delivlab.wait_delivery(m, q4, status="deferred")
    assert ev["dsn"] == "4.3.2" and "held by the routing table" in ev["response"]
    delivlab.wait_delivery(m, q1, status="sent")
    delivlab.wait_delivery(m, q2, status="sent", n=2)
    time.sleep(0.5)
    assert [x["rcpt_tos"] for x in mx.messages()] == [["a@mx.rt.s.test"]]
    assert [sorted(x["rcpt_tos"]) for x in relay1.messages()] == [
        ["b@rel.rt.s.test", "c@rel.rt.s.test"]]
    assert rel_mx.connections() == 0
    # the held message stays queued
    assert q4 in m.queue()


def test_sender_dependent_relay_bind_and_helo(env):
    relay1 = env.aio("relay1")
    relay2 = env.aio("relay2")
    helo = env.aio("helo")
    src = env.lab.addr["src"]
    m = env.start(routes=(
        "snd.rt.s.test from .bulk.example relay %s bind=%s helo=bulk-out.example.net\n"
        "snd.rt.s.test relay %s\n"
        "helo.rt.s.test mx helo=mx-out.example.net\n") % (
            lit(env, "relay2"), src, lit(env, "relay1")))
    qa = submit(m, "news@lists.bulk.example", ["x@snd.rt.s.test"], msg("bulk"))
    qb = submit(m, SENDER, ["y@snd.rt.s.test"], msg("normal"))
    qc = submit(m, SENDER, ["z@helo.rt.s.test"], msg("helo"))
    for q in (qa, qb, qc):
        delivlab.wait_delivery(m, q, status="sent")
    (b,) = relay2.wait_messages(1)
    (n,) = relay1.wait_messages(1)
    (h,) = helo.wait_messages(1)
    assert b["rcpt_tos"] == ["x@snd.rt.s.test"] and b["peer"][0] == src, b
    assert b["helo"] == "bulk-out.example.net", b
    assert n["rcpt_tos"] == ["y@snd.rt.s.test"] and n["peer"][0] != src, n
    assert h["helo"] == "mx-out.example.net", h


def test_fallback_relay_after_n_failures(env):
    # nothing listens on mx.fb: MX delivery fails; after 2 attempts the
    # fallback relay gets the message
    fbr = env.aio("fbrelay")
    m = env.start(routes="* mx fallback=%s fallback_after=2\n" % lit(env, "fbrelay"))
    q = submit(m, SENDER, ["f@fb.rt.s.test"], msg("fallback"))
    (got,) = fbr.wait_messages(1, timeout=30)
    assert got["rcpt_tos"] == ["f@fb.rt.s.test"]
    evs = deliveries(m, q)
    deferred = [e for e in evs if e["status"] == "deferred"]
    sent = [e for e in evs if e["status"] == "sent"]
    assert len(deferred) == 2, evs
    assert "fb.rt.s.test" in deferred[0]["relay"] or deferred[0]["relay"] == "none"
    assert len(sent) == 1 and env.lab.addr["fbrelay"] in sent[0]["relay"], sent


def test_dane_only_route_refuses_non_dane_relay(env):
    # DANE-05: the relay's name has secure A records but no TLSA: a
    # dane-only hop is never connected to
    r = env.aio("drorelay")
    m = env.start(routes="dro.rt.s.test relay relay.dro.rt.s.test:%d level=dane-only\n"
                  % env.port)
    q = submit(m, SENDER, ["g@dro.rt.s.test"], msg("dane-only"))
    (ev,) = delivlab.wait_delivery(m, q, status="deferred", timeout=15)
    assert ev["dsn"].startswith("4.7"), ev
    time.sleep(0.5)
    assert r.connections() == 0


def _gaps(sink):
    ts = sorted(e["t"] for e in sink.events("data"))
    return [b - a for a, b in zip(ts, ts[1:])]


def test_shaping_caps_connections_and_rate(env):
    conc = env.aio("conc")
    rate = env.aio("rate")
    m = env.start(shaping=(
        "conc.rt.s.test connections=1 messages_per_connection=2\n"
        ".rate.rt.s.test rate=30/m\n"))   # suffix of the MX host name
    qs = [submit(m, SENDER, ["c%d@conc.rt.s.test" % i], msg("c%d" % i))
          for i in range(6)]
    qr = [submit(m, SENDER, ["r%d@rate.rt.s.test" % i], msg("r%d" % i))
          for i in range(4)]
    conc.wait_messages(6, timeout=30)
    rate.wait_messages(4, timeout=30)
    for q in qs + qr:
        delivlab.wait_delivery(m, q, status="sent")
    # concurrency from the sink's connect/disconnect timestamps
    evs = sorted(conc.events("connect") + conc.events("disconnect"),
                 key=lambda e: (e["t"], e["event"] == "connect"))
    open_, peak = 0, 0
    for e in evs:
        open_ += 1 if e["event"] == "connect" else -1
        peak = max(peak, open_)
    assert peak == 1, evs
    per_conn = {}
    for e in conc.events("data"):
        per_conn[e["conn"]] = per_conn.get(e["conn"], 0) + 1
    assert max(per_conn.values()) <= 2 and len(per_conn) >= 3, per_conn
    # 30/m: one message every 2 s (lower bound only: a loaded machine is
    # slower, never faster)
    gaps = _gaps(rate)
    assert len(gaps) == 3 and min(gaps) >= 1.7, gaps


def test_throttle_halves_rate_and_recovers(env):
    # the first transaction is refused with a 4.7.x throttling reply
    thr = env.aio("thr", fail_first=1, fail_stage="mail",
                  fail_reply="450 4.7.28 rate limited, slow down")
    m = env.start(shaping="thr.rt.s.test rate=60/m recover=3s\n")
    qs = []
    for i in range(8):
        qs.append(submit(m, SENDER, ["t%d@thr.rt.s.test" % i], msg("t%d" % i)))
    thr.wait_messages(8, timeout=40)
    (t,) = m.wait_event("shaping_throttle", timeout=5) and m.events("shaping_throttle")
    assert t["site"] == "thr.rt.s.test" and t["rate"] == "30.0/m", t
    assert "4.7.28" in t["reply"]
    wait_until(lambda: m.events("shaping_recover", rate="60.0/m"), 20,
               "recovery to 60/m")
    rec = m.events("shaping_recover")
    assert rec[0]["rate"] == "45.0/m", rec
    gaps = _gaps(thr)
    # right after the throttle the spacing is 2 s (half of 60/m)
    assert gaps[0] >= 1.7, gaps


def test_delay_warning_once_and_parsed(env):
    # DSN-05/06: a held recipient waits; after delivery.delay_warning one
    # "delayed" DSN goes to the sender, never a second, never for <>
    snd = env.aio("dsn")
    m = env.start(routes="hold.rt.s.test hold\n",
                  **{"delivery.delay_warning": "2s"})
    q = submit(m, "alice@dsn.rt.s.test", ["w@hold.rt.s.test"], msg("late"))
    qn = submit(m, "", ["v@hold.rt.s.test"], msg("null-sender"))
    (d,) = snd.wait_messages(1, timeout=20)
    # several more attempts: still one DSN
    wait_until(lambda: len(deliveries(m, q, status="deferred")) >= 4, 20,
               "more attempts")
    wait_until(lambda: len(deliveries(m, qn, status="deferred")) >= 4, 20,
               "more attempts of the null-sender message")
    time.sleep(1.0)
    assert len(snd.messages()) == 1, snd.messages()
    assert d["mail_from"] in ("", "<>") and d["rcpt_tos"] == ["alice@dsn.rt.s.test"]
    em = email.message_from_bytes(d["data"], policy=email.policy.default)
    assert em.get_content_type() == "multipart/report"
    assert em.get_param("report-type") == "delivery-status"
    parts = list(em.iter_parts())
    assert parts[1].get_content_type() == "message/delivery-status"
    fields = parts[1].as_string()
    assert "Action: delayed" in fields, fields
    assert "Final-Recipient: rfc822;w@hold.rt.s.test" in fields.replace("; ", ";"), fields
    assert "Status: 4.3.2" in fields, fields
    assert "Will-Retry-Until:" in fields, fields
    # the message is still queued, the warning remembered in the spool
    assert q in m.queue() and qn in m.queue()


# -- reload (SIGHUP) and per-site figures -----------------------------------

def _ctl(m, *args):
    from mtadtest import MTACTL
    p = m.run_tool([MTACTL, "-c", m.conf] + list(args), check=False)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def _sites(m):
    """{site: row} from mtactl sites (SITE CONN RATE CEILING SENT
    THROTTLES NEXT_MS)."""
    rc, out, err = _ctl(m, "sites")
    assert rc == 0, (rc, out, err)
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["SITE", "CONN"], out
    rows = {}
    for line in lines[1:]:
        site, conn, rate, ceil, sent, thr, nxt = line.split()
        rows[site] = {"conn": conn, "rate": rate, "ceiling": ceil,
                      "sent": int(sent), "throttles": int(thr),
                      "next_ms": int(nxt)}
    return rows


def _hup(m, ok=True):
    n = len(m.events("reloaded")) if ok else len(m.events("reload_failed"))
    m.signal(signal.SIGHUP)
    ev = "reloaded" if ok else "reload_failed"
    wait_until(lambda: len(m.events(ev)) > n, 10, "event=%s" % ev)
    return m.events(ev)[-1]


def test_sighup_rereads_routes_and_refuses_a_broken_table(env):
    relay1 = env.aio("relay1")
    relay2 = env.aio("relay2")
    m = env.start(routes="rel.rt.s.test relay %s level=may\n" % lit(env, "relay1"))
    q1 = submit(m, SENDER, ["a1@rel.rt.s.test"], msg("before"))
    delivlab.wait_delivery(m, q1, status="sent")
    relay1.wait_messages(1)
    # a changed table: new mail takes the new route
    (env.tmp / "routes").write_text(
        "# moved\nrel.rt.s.test relay %s level=may\n" % lit(env, "relay2"))
    _hup(m)
    tr = m.wait_event("tables_reloaded", timeout=5)
    assert tr and tr[-1]["routes"] == "1", tr
    q2 = submit(m, SENDER, ["a2@rel.rt.s.test"], msg("after"))
    delivlab.wait_delivery(m, q2, status="sent")
    (got,) = relay2.wait_messages(1)
    assert got["rcpt_tos"] == ["a2@rel.rt.s.test"], got
    # a broken table refuses the whole reload, with file:line in the log;
    # the route in force (relay2) stays
    (env.tmp / "routes").write_text(
        "rel.rt.s.test relay %s\nrel.rt.s.test teleport\n" % lit(env, "relay1"))
    ev = _hup(m, ok=False)
    assert "%s:2:" % (env.tmp / "routes") in ev["error"], ev
    q3 = submit(m, SENDER, ["a3@rel.rt.s.test"], msg("after broken"))
    delivlab.wait_delivery(m, q3, status="sent")
    relay2.wait_messages(2)
    time.sleep(0.5)
    assert len(relay1.messages()) == 1, relay1.messages()
    assert [x["rcpt_tos"] for x in relay2.messages()] == [
        ["a2@rel.rt.s.test"], ["a3@rel.rt.s.test"]]


def test_sites_show_halved_rate_and_keep_it_across_reload(env):
    thr = env.aio("thr", fail_first=1, fail_stage="mail",
                  fail_reply="450 4.7.28 rate limited, slow down")
    m = env.start(shaping="thr.rt.s.test rate=60/m recover=10m connections=3\n")
    rows = _sites(m)
    assert rows["thr.rt.s.test"]["rate"] == "60.0/m", rows
    assert rows["thr.rt.s.test"]["throttles"] == 0, rows
    qs = [submit(m, SENDER, ["s%d@thr.rt.s.test" % i], msg("s%d" % i))
          for i in range(2)]
    assert m.wait_event("shaping_throttle", timeout=20), m.log_tail()
    thr.wait_messages(2, timeout=40)
    for q in qs:
        delivlab.wait_delivery(m, q, status="sent", timeout=40)
    row = _sites(m)["thr.rt.s.test"]
    assert row["rate"] == "30.0/m" and row["ceiling"] == "60.0/m", row
    assert row["throttles"] == 1 and row["sent"] >= 2, row
    assert row["conn"].endswith("/3"), row
    # a reload that keeps the pattern keeps the halved rate and counters
    (env.tmp / "shaping").write_text(
        ".other.example rate=10/m\nthr.rt.s.test rate=60/m recover=10m connections=3\n")
    _hup(m)
    rows = _sites(m)
    assert rows["thr.rt.s.test"]["rate"] == "30.0/m", rows
    assert rows["thr.rt.s.test"]["throttles"] == 1, rows
    assert rows[".other.example"]["rate"] == "10.0/m", rows
    # the new rule is counted in the reload line
    assert m.events("tables_reloaded")[-1]["shaping"] == "2"
