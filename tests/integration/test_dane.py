"""DANE for SMTP (RFC 7672) end to end: the real mtad delivering through the
DNSSEC lab (tests/lab/dnslab.py) to the lab's sinks (tests/lab/sinks.py).

Issue #4 list; conformance ids from shared/reference/conformance.md section 2
(DANE-nn) are named in each test.

The DNS lab is started once per module.  All test domains, their MX hosts,
addresses and TLSA records (at _P._tcp.<host>, P = the one delivery.port
every sink of this module listens on) are put into the lab's zones at
start-up in one go, so no test re-signs zones.  Certificates (CA-L = the lab
"WebPKI" CA that some tests put into tls.ca_file, CA-P = a private DANE CA,
self-signed leaves) are made at start-up too: TLSA data depend on them.

Each test starts the sinks it needs on its hosts' addresses, one mtad
(delivery.port = P, dns.resolver/trust_anchor = the lab's), submits one
message per destination domain and checks: what each sink received (or that
it saw no connection at all), and mtad's event=delivery line (status, dsn,
auth, tls, response).

Run:  /usr/bin/python3 -m pytest -q tests/integration/test_dane.py
      MTAD_BUILD_DIR=$PWD/build-asan /usr/bin/python3 -m pytest -q tests/integration/test_dane.py
(about 20 s; needs knot, unbound, ldnsutils, python3-dnspython, python3-aiosmtpd)
"""
import hashlib
import os
import re
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

import delivlab  # noqa: E402
from delivlab import (SENDER, msg, submit, wait_delivery, wait_rcpt,  # noqa: E402
                      wait_gone, wait_until, deliveries)
import mtadtest  # noqa: E402
import sinks  # noqa: E402  (path set up by delivlab)
from sinks import sink_lab  # noqa: E402,F401  (fixture)


def _zone_of(name):
    name = name.rstrip(".")
    if name.endswith(".b.s.test"):
        return "b.s.test."
    if name.endswith(".u.test"):
        return "u.test."
    assert name.endswith(".s.test") and not name.endswith(".f.s.test"), name
    return "s.test."


def _sha(tag):
    return hashlib.sha256(tag.encode()).hexdigest()


class DaneLab:
    """The module's DNS lab, certificates and the address plan."""

    def __init__(self, dns, certdir):
        self.dns = dns
        self.dir = certdir
        self.addr = {}        # host (MX name) -> 127.1.X.Y
        self.certfiles = {}   # host -> (cert.pem, key.pem)
        self.lines = {}       # zone -> record lines
        self.tlsa_recs = []   # (host, "u s m data")
        self.tlsa_cnames = []  # (host, target)
        self.tampered = []    # (host, "u s m data")
        # CA-L: the lab WebPKI CA (root + intermediate), in tls.ca_file when
        # a test says so.  CA-P: a private DANE CA, never in tls.ca_file.
        self.ca_l = sinks.make_ca("Lab WebPKI Root CA")
        self.ca_l_int = sinks.make_ca("Lab WebPKI Intermediate CA", issuer=self.ca_l)
        self.ca_p = sinks.make_ca("Private DANE CA")
        self.ca_file = self.ca_l.write_ca(os.path.join(certdir, "ca-l.pem"))
        # a key no sink ever presents: its TLSA never matches
        self.other = sinks.self_signed(["other.test"])
        self.o311 = self.other.tlsa(3, 1, 1)
        self._build()
        self.port = delivlab.choose_port(list(self.addr.values()))
        self._render()

    # -- building blocks ---------------------------------------------------
    def _line(self, zone, text):
        self.lines.setdefault(zone, []).append(text)

    def host(self, host, cert=None, root=False, chain=True, a=True):
        """An address for host (A record unless a=False) and the sink
        certificate files for it."""
        self.addr[host] = sinks.alloc_addr()
        if a:
            self._line(_zone_of(host), "%s. 60 IN A %s" % (host, self.addr[host]))
        if cert is not None:
            self.certfiles[host] = cert.write(self.dir, host, chain=chain, root=root)
        return host

    def mx(self, dom, *hosts):
        """dom MX records: hosts are (pref, host)."""
        for pref, h in hosts:
            self._line(_zone_of(dom), "%s. 60 IN MX %d %s." % (dom, pref, h))

    def tlsa(self, host, *rdatas):
        for r in rdatas:
            self.tlsa_recs.append((host, r))

    def simple(self, dom, cert, tlsa=(), root=False, chain=True):
        """dom MX 10 mx.dom, mx.dom A <addr>, TLSA at _P._tcp.mx.dom."""
        h = self.host("mx." + dom, cert, root=root, chain=chain)
        self.mx(dom, (10, h))
        self.tlsa(h, *tlsa)
        return h

    # -- the domains of the tests ------------------------------------------
    def _build(self):
        P, L, o = self.ca_p, self.ca_l_int, self.o311
        ss = sinks.self_signed

        # 1. DANE-EE
        c = sinks.issue(P, ["mx.ee.s.test"])
        self.simple("ee.s.test", c, [c.tlsa(3, 1, 1)], root=True)
        c = sinks.issue(P, ["mx.ee301.s.test"])
        self.simple("ee301.s.test", c, [c.tlsa(3, 0, 1)], root=True)
        # 2. mismatch (plus an unusable record: no degrade, DANE-55)
        c = ss(["mx.eebad.s.test"])
        self.simple("eebad.s.test", c, [o, "0 0 1 " + _sha("junk")])
        # 3. DANE-EE ignores dates and names
        c = ss(["unrelated.test"], not_before=-30, not_after=-1)
        self.simple("eeexp.s.test", c, [c.tlsa(3, 1, 1)])
        c = sinks.issue(P, ["mx.eenyv.s.test"], not_before=2, not_after=30)
        self.simple("eenyv.s.test", c, [c.tlsa(3, 1, 1)], root=True)
        c = sinks.issue(L, ["other.test"])
        self.simple("eewrong.s.test", c, [c.tlsa(3, 1, 1)])
        # 4. DANE-TA 2 1 1 of CA-P, root sent in the chain
        ta = P.tlsa(2, 1, 1)
        self.simple("ta.s.test", sinks.issue(P, ["mx.ta.s.test"]), [ta], root=True)
        self.simple("tanh.s.test", sinks.issue(P, ["tanh.s.test"]), [ta], root=True)
        self.simple("taname.s.test", sinks.issue(P, ["unrelated.test"]), [ta], root=True)
        self.simple("taexp.s.test", sinks.issue(P, ["mx.taexp.s.test"], not_before=-30,
                                                not_after=-1), [ta], root=True)
        # 5. DANE-TA 2 0 1: anchor in the chain, and missing from it
        self.simple("ta201.s.test", sinks.issue(P, ["mx.ta201.s.test"]),
                    [P.tlsa(2, 0, 1)], root=True)
        self.simple("tamiss.s.test", sinks.issue(P, ["mx.tamiss.s.test"]),
                    [P.tlsa(2, 0, 1)], root=False)
        # 6. rogue: a CA-L (locally trusted) chain, TLSA name CA-P / another key
        self.simple("rogue.s.test", sinks.issue(L, ["mx.rogue.s.test"]),
                    [P.tlsa(2, 0, 1), o])
        # 7. no STARTTLS / STARTTLS stripped
        c = ss(["mx.nostls.s.test"])
        self.simple("nostls.s.test", c, [c.tlsa(3, 1, 1)])
        c = ss(["mx.strip.s.test"])
        h = self.simple("strip.s.test", c, [c.tlsa(3, 1, 1)])
        self.host("backend.strip", a=False)
        self.certfiles["backend.strip"] = self.certfiles[h]
        # 8. insecure: MX host in u.test with TLSA (DANE-02), insecure MX
        # RRset to a secure host with TLSA (DANE-22), secure MX to an
        # insecure host with TLSA (DANE-32)
        self.simple("ins.u.test", ss(["mx.ins.u.test"]), [o])
        h = self.host("mx.uis.s.test", ss(["mx.uis.s.test"]))
        self.mx("uis.u.test", (10, h))
        self.tlsa(h, o)
        h = self.host("mx.sui.u.test", ss(["mx.sui.u.test"]))
        self.mx("sui.s.test", (10, h))
        self.tlsa(h, o)
        # 9. bogus zone; the domain's own A points at the same sink
        c = ss(["mx.bg.b.s.test"])
        h = self.simple("bg.b.s.test", c, [c.tlsa(3, 1, 1)])
        self._line("b.s.test.", "bg.b.s.test. 60 IN A %s" % self.addr[h])
        # 10. TLSA lookup errors: SERVFAIL and dropped queries (TLSA CNAME
        # into f.s.test), a bogus TLSA RRset, and an error on mx1 only
        for name in ("tsf", "tdrop"):
            c = ss(["mx.%s.s.test" % name])
            h = self.simple("%s.s.test" % name, c)
            self.tlsa_cnames.append((h, "tlsa.%s.f.s.test" % name))
        c = ss(["mx.tbog.s.test"])
        h = self.simple("tbog.s.test", c, [c.tlsa(3, 1, 1)])
        self.tampered.append((h, o))
        c1, c2 = ss(["mx1.mixe.s.test"]), ss(["mx2.mixe.s.test"])
        h1 = self.host("mx1.mixe.s.test", c1)
        h2 = self.host("mx2.mixe.s.test", c2)
        self.mx("mixe.s.test", (10, h1), (20, h2))
        self.tlsa_cnames.append((h1, "tlsa.mixe.f.s.test"))
        self.tlsa(h2, c2.tlsa(3, 1, 1))
        # 11. only unusable TLSA records
        pkix = ["0 0 1 " + _sha("pkix-ta"), "1 1 1 " + _sha("pkix-ee")]
        self.simple("pkix.s.test", ss(["unrelated.test"]), pkix)
        self.simple("pkixnotls.s.test", ss(["unrelated.test"]), pkix)
        c = ss(["unrelated.test"])
        good = c.tlsa(3, 1, 1).split()[3]
        self.simple("unk.s.test", c, [
            "4 1 1 " + good, "3 2 1 " + good, "3 1 3 " + good,
            "255 1 1 " + good,
            "3 1 1 " + good[:62],               # 31-byte SHA2-256
            "3 1 2 " + good])                   # 32-byte SHA2-512
        # 12. mx1 TLSA mismatch, mx2 secure NODATA
        h1 = self.host("mx1.mix.s.test", ss(["mx1.mix.s.test"]))
        h2 = self.host("mx2.mix.s.test", ss(["mx2.mix.s.test"]))
        self.mx("mix.s.test", (10, h1), (20, h2))
        self.tlsa(h1, o)
        # 13. policy table
        c = ss(["mx.pnone.s.test"])
        self.simple("pnone.s.test", c, [c.tlsa(3, 1, 1)])
        self.simple("pmay.s.test", ss(["mx.pmay.s.test"]), [o])
        self.simple("pdo.s.test", ss(["mx.pdo.s.test"]))
        self.simple("pdou.u.test", ss(["mx.pdou.u.test"]))
        self.simple("pver.s.test", sinks.issue(L, ["mx.pver.s.test"]))
        self.simple("pvself.s.test", ss(["mx.pvself.s.test"]))
        # 15. CNAMEs: secure CNAME to an insecure target (DANE-36), all
        # secure with TLSA at the target (DANE-34) / only at the original
        # (DANE-35)
        for name, good_tlsa in (("c36", True), ("c36bad", False)):
            c = ss(["unrelated.test"])
            h = "mx.%s.s.test" % name
            self.host(h, c, a=False)
            self._line("s.test.", "%s. 60 IN CNAME mxt.%s.u.test." % (h, name))
            self._line("u.test.", "mxt.%s.u.test. 60 IN A %s" % (name, self.addr[h]))
            self.mx("%s.s.test" % name, (10, h))
            self.tlsa(h, c.tlsa(3, 1, 1) if good_tlsa else o)
        for name in ("c34", "c35"):
            c = ss(["unrelated.test"])
            h = "mx.%s.s.test" % name
            self.host(h, c, a=False)
            self._line("s.test.", "%s. 60 IN CNAME mxb.%s.s.test." % (h, name))
            self._line("s.test.", "mxb.%s.s.test. 60 IN A %s" % (name, self.addr[h]))
            self.mx("%s.s.test" % name, (10, h))
            if name == "c34":
                self.tlsa("mxb.c34.s.test", c.tlsa(3, 1, 1))
                self.tlsa(h, o)
            else:
                self.tlsa(h, c.tlsa(3, 1, 1))

        # 16. issue 18.  DANE-62: the MX resets the TLS handshake; no
        # TLSA (level may), "encrypt" in the policy table, usable TLSA
        for name in ("fb", "fbenc"):
            self.simple("%s.s.test" % name, ss(["mx.%s.s.test" % name]))
        c = ss(["mx.fbdane.s.test"])
        self.simple("fbdane.s.test", c, [c.tlsa(3, 1, 1)])
        # a bogus TLSA RRset at mx1, good TLSA at mx2
        c1, c2 = ss(["mx1.skipb.s.test"]), ss(["mx2.skipb.s.test"])
        h1 = self.host("mx1.skipb.s.test", c1)
        h2 = self.host("mx2.skipb.s.test", c2)
        self.mx("skipb.s.test", (10, h1), (20, h2))
        self.tlsa(h1, c1.tlsa(3, 1, 1))
        self.tampered.append((h1, o))
        self.tlsa(h2, c2.tlsa(3, 1, 1))
        # only a PKIX-EE record (a common misconfiguration)
        self.simple("do111.s.test", ss(["mx.do111.s.test"]),
                    ["1 1 1 " + _sha("pkix-ee-only")])
        # 65 records: 64 unusable ones sort (and travel) before the one
        # usable record, which matches
        c = ss(["mx.t65.s.test"])
        self.simple("t65.s.test", c, ["1 1 1 " + _sha("u%d" % i) for i in range(64)]
                    + [c.tlsa(3, 1, 1)])
        # an MX exchange that looks like an IPv4 address
        self.addr["ipmx"] = sinks.alloc_addr()
        self.certfiles["ipmx"] = ss(["ipmx.s.test"]).write(self.dir, "ipmx")
        self._line("s.test.", "ipmx.s.test. 60 IN MX 10 %s." % self.addr["ipmx"])

    def owner(self, host):
        return "_%d._tcp.%s." % (self.port, host)

    def _render(self):
        for h, r in self.tlsa_recs:
            self._line(_zone_of(h), "%s 60 IN TLSA %s" % (self.owner(h), r))
        for h, t in self.tlsa_cnames:
            self._line(_zone_of(h), "%s 60 IN CNAME %s." % (self.owner(h), t))
        for h, r in self.tampered:
            self.dns.tamper(_zone_of(h), self.owner(h), "TLSA", r, reload=False)
        for zone, lines in self.lines.items():
            self.dns.add_zone_records(zone, lines)
        self.dns.responder_rule("tlsa.tsf.f.s.test", "TLSA", "servfail")
        self.dns.responder_rule("tlsa.mixe.f.s.test", "TLSA", "servfail")
        self.dns.responder_rule("tlsa.tdrop.f.s.test", "TLSA", "drop")

    # -- per test ----------------------------------------------------------
    def sink(self, sl, host, tls=True, **kw):
        """An AioSink on host's address.  TLS 1.2 unless tls_max_version is
        given, so the DANE cases do not depend on TLS 1.3 post-handshake
        handling (mtad once stalled on session tickets after the post-TLS
        EHLO); test_tls13_session_tickets_no_stall covers TLS 1.3."""
        if tls:
            kw["tls"] = self.certfiles[host]
            kw.setdefault("tls_max_version", "TLSv1_2")
        return sl.aio(addr=self.addr[host], port=self.port, **kw)


@pytest.fixture(scope="module")
def dane():
    missing = delivlab.lab_tools_missing()
    if missing:
        pytest.skip("%s missing (Debian knot, unbound, ldnsutils)" % missing)
    certdir = tempfile.mkdtemp(prefix="mtit-dane-", dir="/tmp")
    os.chmod(certdir, 0o711)  # reachable after mtad's privilege drop
    dns = delivlab.start_dns_lab()
    try:
        yield DaneLab(dns, certdir)
    finally:
        dns.stop()
        shutil.rmtree(certdir, ignore_errors=True)


class Env:
    def __init__(self, dane, sl, factory):
        self.d = dane
        self.sl = sl
        self.factory = factory
        self.mtad = None

    def start(self, **extra):
        s = delivlab.mtad_settings(self.d.dns, self.d.port, **extra)
        self.mtad = self.factory(settings=s)
        return self.mtad

    def sink(self, host, tls=True, **kw):
        return self.d.sink(self.sl, host, tls=tls, **kw)


@pytest.fixture
def env(dane, sink_lab, mtad_factory):
    return Env(dane, sink_lab, mtad_factory)


# ---------------------------------------------------------------------------
# helpers

def send(mtad, dom, tag=None):
    rcpt = "bob@" + dom
    return submit(mtad, SENDER, [rcpt], msg(tag or dom)), rcpt


def expect_sent(mtad, qid, sink, auth, sni=None, relay_host=None, timeout=10.0):
    """The sink got the message over TLS; mtad logged status=sent with auth."""
    try:
        (rec,) = sink.wait_messages(1, timeout=timeout)
    except AssertionError:
        raise AssertionError("no message at %s; mtad delivery lines:\n%s\nsink events: %r"
                             % (sink.endpoint, "\n".join(e["_line"] for e in deliveries(mtad, qid)),
                                [(e["event"], e.get("conn")) for e in sink.events()][-12:]))
    evs = wait_delivery(mtad, qid, status="sent")
    ev = evs[0]
    print(ev["_line"])
    assert ev["dsn"].startswith("2."), ev["_line"]
    if auth.endswith("*"):
        assert ev.get("auth", "").startswith(auth[:-1]), ev["_line"]
    else:
        assert ev.get("auth") == auth, ev["_line"]
    if relay_host:
        assert ev["relay"].startswith(relay_host + "["), ev["_line"]
    assert rec["tls"], "message was not sent over TLS: %r" % rec
    assert re.search(r"TLS ?v?1\.[23]", ev.get("tls", "")), ev["_line"]
    assert rec["tls_version"] in ("TLSv1.2", "TLSv1.3"), rec
    if sni is not None:
        assert rec["sni"] == sni, "SNI %r, expected %r" % (rec["sni"], sni)
    wait_gone(mtad, qid)
    return ev, rec


def expect_deferred(mtad, qid, rcpt, dsn, reason=None, attempts=1, timeout=10.0):
    """attempts event=delivery status=deferred lines with dsn (a regex) and
    the spool shows the recipient deferred.  Nothing else logged for qid."""
    evs = wait_delivery(mtad, qid, status="deferred", n=attempts, timeout=timeout)
    print(evs[0]["_line"])
    for ev in evs:
        assert re.fullmatch(dsn, ev["dsn"]), ev["_line"]
        if reason:
            assert re.search(reason, ev.get("response", "")), ev["_line"]
    other = [e["_line"] for e in deliveries(mtad, qid) if e.get("status") != "deferred"]
    assert not other, other
    st = wait_rcpt(mtad, qid, rcpt)
    assert st["state"] == "deferred", st
    return evs


def assert_selftest_ok(mtad):
    """The DNSSEC self-test passed with the lab's trust anchor; while it
    fails, mtad defers every insecure domain (4.4.3) by design."""
    evs = wait_until(lambda: mtad.events("dnssec_selftest"), 5, "event=dnssec_selftest")
    assert evs[0].get("status") == "ok", (
        "DNSSEC self-test failed with the lab's own trust anchor, so insecure "
        "domains cannot be delivered: %s" % evs[0]["_line"])


def no_message(sink):
    assert sink.messages() == [], sink.messages()
    assert sink.events("mail") == [], "MAIL reached the sink: %r" % sink.events("mail")


def no_connection(sink):
    assert sink.connections() == 0, (
        "%d connection(s) to %s: %r" % (sink.connections(), sink.endpoint, sink.events()))


# ---------------------------------------------------------------------------
# 1.-3. DANE-EE

def test_dane50_70_71_100_ee_match_sent_sni(env):
    """DANE-50/100: TLSA 3 1 1 of the sink's leaf: sent, auth="dane 3 1 1",
    the sink saw TLS with SNI = the MX host name.  DANE-71: 3 0 1 (digest
    of the whole certificate) as well."""
    s1 = env.sink("mx.ee.s.test")
    s2 = env.sink("mx.ee301.s.test")
    mtad = env.start()
    q1, _ = send(mtad, "ee.s.test")
    q2, _ = send(mtad, "ee301.s.test")
    expect_sent(mtad, q1, s1, "dane 3 1 1", sni="mx.ee.s.test")
    expect_sent(mtad, q2, s2, "dane 3 0 1", sni="mx.ee301.s.test")
    # recorded for TLS reporting (RFC 8460: policy type tlsa)
    _wait_count(mtad, ("ee.s.test", "tlsa", "successful-session"))


def test_dane55_112_ee_mismatch_deferred_475(env):
    """DANE-112/55: 3 1 1 that does not match (plus a PKIX record: no
    downgrade to encryption-only): not sent, deferred 4.7.5, the reason
    names the host; the sink got TLS but no MAIL."""
    s = env.sink("mx.eebad.s.test")
    mtad = env.start()
    qid, rcpt = send(mtad, "eebad.s.test")
    expect_deferred(mtad, qid, rcpt, r"4\.7\.5", reason=r"mx\.eebad\.s\.test")
    assert s.connections() >= 1
    no_message(s)
    _wait_count(mtad, ("eebad.s.test", "tlsa", "tlsa-invalid"))


def _wait_count(mtad, key, deadline_s=10):
    """Waits until mtactl tlsrpt counts key (domain, type, result)."""
    import time as _t
    end = _t.time() + deadline_s
    while True:
        c = mtad.tlsrpt()
        if c.get(key, 0) >= 1:
            return c
        assert _t.time() < end, (key, c)
        _t.sleep(0.1)


def test_dane70_74_75_ee_ignores_dates_and_names(env):
    """DANE-70: self-signed, expired, SAN unrelated.test; DANE-74: not yet
    valid; DANE-75: a CA-L cert for other.test only.  3 1 1 matches: sent."""
    hosts = ["eeexp", "eenyv", "eewrong"]
    sk = {h: env.sink("mx.%s.s.test" % h) for h in hosts}
    mtad = env.start()
    q = {h: send(mtad, "%s.s.test" % h)[0] for h in hosts}
    for h in hosts:
        expect_sent(mtad, q[h], sk[h], "dane 3 1 1", sni="mx.%s.s.test" % h)


# ---------------------------------------------------------------------------
# 4.-6. DANE-TA

def test_dane84_85_87_92_ta_2_1_1(env):
    """2 1 1 = SPKI of CA-P, the root sent in the chain.  DANE-84: leaf for
    the MX name: sent auth="dane 2 1 1".  DANE-85: leaf for the next-hop
    domain only: sent.  DANE-87: leaf for unrelated.test: deferred 4.7.5.
    DANE-92: expired leaf: deferred 4.7.5."""
    names = ["ta", "tanh", "taname", "taexp"]
    sk = {n: env.sink("mx.%s.s.test" % n) for n in names}
    mtad = env.start()
    q = {n: send(mtad, "%s.s.test" % n) for n in names}
    expect_sent(mtad, q["ta"][0], sk["ta"], "dane 2 1 1", sni="mx.ta.s.test")
    expect_sent(mtad, q["tanh"][0], sk["tanh"], "dane 2 1 1", sni="mx.tanh.s.test")
    expect_deferred(mtad, *q["taname"], r"4\.7\.5", reason=r"name|mx\.taname\.s\.test")
    expect_deferred(mtad, *q["taexp"], r"4\.7\.5", reason=r"expired")
    for n in ("taname", "taexp"):
        assert sk[n].connections() >= 1
        no_message(sk[n])


def test_dane80_82_ta_2_0_1_anchor_must_be_in_chain(env):
    """DANE-80: 2 0 1 of CA-P with the root in the chain: sent.  DANE-82:
    the same record, the server omits the root: deferred 4.7.5."""
    s_ok = env.sink("mx.ta201.s.test")
    s_miss = env.sink("mx.tamiss.s.test")
    mtad = env.start()
    q_ok, _ = send(mtad, "ta201.s.test")
    q_miss, r_miss = send(mtad, "tamiss.s.test")
    expect_sent(mtad, q_ok, s_ok, "dane 2 0 1", sni="mx.ta201.s.test")
    expect_deferred(mtad, q_miss, r_miss, r"4\.7\.5", reason=r"mx\.tamiss\.s\.test")
    no_message(s_miss)


def test_dane94_rogue_ca_in_local_store_refused(env):
    """DANE-94: the sink's chain is from CA-L, which IS in tls.ca_file, for
    the right name (a valid WebPKI certificate: see the verify case of the
    policy test), but the TLSA names CA-P / another key: refused, 4.7.5."""
    s = env.sink("mx.rogue.s.test")
    mtad = env.start(**{"tls.ca_file": env.d.ca_file})
    qid, rcpt = send(mtad, "rogue.s.test")
    evs = expect_deferred(mtad, qid, rcpt, r"4\.7\.5", reason=r"mx\.rogue\.s\.test")
    assert evs[0].get("auth") != "verify", evs[0]["_line"]
    assert s.connections() >= 1
    no_message(s)


# ---------------------------------------------------------------------------
# 7. STARTTLS missing or stripped

def test_dane60_no_starttls_and_stripped_deferred(env):
    """DANE-60: usable TLSA, the sink offers no STARTTLS: deferred 4.7.4,
    never cleartext.  The same with a TLS sink behind a proxy that strips
    STARTTLS from the EHLO reply: the backend never sees MAIL."""
    plain = env.sink("mx.nostls.s.test", tls=False)
    backend = env.sink("backend.strip")
    strip = env.sl.stripper(backend, addr=env.d.addr["mx.strip.s.test"], port=env.d.port)
    mtad = env.start()
    q1, r1 = send(mtad, "nostls.s.test")
    q2, r2 = send(mtad, "strip.s.test")
    expect_deferred(mtad, q1, r1, r"4\.7\.4", reason=r"STARTTLS")
    expect_deferred(mtad, q2, r2, r"4\.7\.4", reason=r"STARTTLS")
    assert plain.connections() >= 1
    no_message(plain)
    assert strip.events("stripped"), strip.events()
    no_message(backend)


# ---------------------------------------------------------------------------
# 8. insecure

def test_dane02_22_32_132_insecure_opportunistic(env):
    """TLSA published but not obtained securely: opportunistic TLS, never
    auth=dane.  DANE-02/132: MX host in u.test with (mismatching) TLSA.
    DANE-22: insecure MX RRset (u.test) naming a secure host whose TLSA
    mismatch.  DANE-32: secure MX naming a host in u.test: no TLSA query."""
    hosts = {"ins.u.test": "mx.ins.u.test", "uis.u.test": "mx.uis.s.test",
             "sui.s.test": "mx.sui.u.test"}
    sk = {d: env.sink(h) for d, h in hosts.items()}
    mtad = env.start()
    q = {d: send(mtad, d)[0] for d in hosts}
    assert_selftest_ok(mtad)
    for d, h in hosts.items():
        expect_sent(mtad, q[d], sk[d], "none", relay_host=h)
    log = [(n.rstrip(".").lower(), t) for n, t in env.d.dns.query_log()]
    assert ("mx.sui.u.test", "A") in log, "unbound's query log is not usable: %r" % log[-20:]
    owner = env.d.owner("mx.sui.u.test").rstrip(".").lower()
    asked = [n for n, t in log if t == "TLSA" and n == owner]
    assert not asked, "DANE-32: TLSA queried for a host with insecure addresses: %r" % asked


# ---------------------------------------------------------------------------
# 9.-10. bogus and failed lookups: no connection

def test_dane04_bogus_mx_deferred_no_connection(env):
    """DANE-04: the MX RRset of bg.b.s.test is bogus (and so is the
    domain's A, which points at the same sink): deferred 4.4.3, no
    connection, also on the retry."""
    s = env.sink("mx.bg.b.s.test")
    mtad = env.start()
    qid, rcpt = send(mtad, "bg.b.s.test")
    expect_deferred(mtad, qid, rcpt, r"4\.4\.3", reason=r"bogus", attempts=2)
    no_connection(s)


def test_dane09_08_tlsa_lookup_error_no_connection(env):
    """DANE-09: the only host's TLSA lookup fails (SERVFAIL; dropped
    queries = timeout) and DANE-08/43: its TLSA RRset is bogus: deferred
    4.4.3, no connection to the host.  DANE-121: mx1's TLSA lookup fails,
    mx2 has matching TLSA: sent via mx2 with DANE, mx1 never contacted."""
    names = ["tsf", "tdrop", "tbog"]
    sk = {n: env.sink("mx.%s.s.test" % n) for n in names}
    m1 = env.sink("mx1.mixe.s.test")
    m2 = env.sink("mx2.mixe.s.test")
    mtad = env.start()
    q = {n: send(mtad, "%s.s.test" % n) for n in names}
    qm, _ = send(mtad, "mixe.s.test")
    expect_sent(mtad, qm, m2, "dane 3 1 1", sni="mx2.mixe.s.test")
    no_connection(m1)
    for n in names:
        expect_deferred(mtad, *q[n], r"4\.4\.3", reason=r"TLSA", timeout=15)
    for n in names:
        no_connection(sk[n])


# ---------------------------------------------------------------------------
# 11. only unusable TLSA records

def test_dane51_52_53_unusable_tlsa_tls_required(env):
    """DANE-51: only PKIX-TA/PKIX-EE records; DANE-52/53: unknown
    parameters and malformed digests only: TLS mandatory, not
    authenticated: sent over TLS to a self-signed cert for unrelated.test
    (auth "encrypt (TLSA unusable)").  The PKIX-only set at a sink without STARTTLS:
    deferred 4.7.4, never cleartext."""
    s1 = env.sink("mx.pkix.s.test")
    s2 = env.sink("mx.unk.s.test")
    s3 = env.sink("mx.pkixnotls.s.test", tls=False)
    mtad = env.start()
    q1, _ = send(mtad, "pkix.s.test")
    q2, _ = send(mtad, "unk.s.test")
    q3, r3 = send(mtad, "pkixnotls.s.test")
    expect_sent(mtad, q1, s1, "encrypt*", sni="mx.pkix.s.test")
    expect_sent(mtad, q2, s2, "encrypt*", sni="mx.unk.s.test")
    expect_deferred(mtad, q3, r3, r"4\.7\.4")
    assert s3.connections() >= 1
    no_message(s3)


# ---------------------------------------------------------------------------
# 12. mixed MX set

def test_dane120_mx1_dane_fails_mx2_without_tlsa(env):
    """DANE-120: mx1 (pref 10) has TLSA that do not match, mx2 (pref 20)
    has none (secure NODATA): mx1 is contacted and refused, the message
    goes to mx2 over opportunistic TLS (auth=none)."""
    s1 = env.sink("mx1.mix.s.test")
    s2 = env.sink("mx2.mix.s.test")
    mtad = env.start()
    qid, _ = send(mtad, "mix.s.test")
    expect_sent(mtad, qid, s2, "none", relay_host="mx2.mix.s.test")
    assert s1.connections() >= 1
    no_message(s1)


# ---------------------------------------------------------------------------
# 13. local policy table

def test_dane110_111_113_policy_table(env, tmp_path):
    """tls.policy_file: `none` for a domain with matching TLSA: no STARTTLS
    even though offered; `may` with mismatching TLSA (DANE-113): sent,
    auth=none; `dane-only` without TLSA (DANE-110) and with an insecure MX
    (DANE-111/23): deferred 4.7.5 without a connection; `verify` with a
    CA-L certificate for the MX name: sent auth=verify; with a self-signed
    certificate: deferred 4.7.5."""
    pol = tmp_path / "tls-policy"
    pol.write_text("pnone.s.test none\npmay.s.test may\npdo.s.test dane-only\n"
                   "pdou.u.test dane-only\npver.s.test verify\npvself.s.test verify\n")
    doms = ["pnone.s.test", "pmay.s.test", "pdo.s.test", "pdou.u.test",
            "pver.s.test", "pvself.s.test"]
    sk = {d: env.sink("mx." + d) for d in doms}
    mtad = env.start(**{"tls.policy_file": str(pol), "tls.ca_file": env.d.ca_file})
    q = {d: send(mtad, d) for d in doms}

    (rec,) = sk["pnone.s.test"].wait_messages(1)
    assert not rec["tls"], rec
    assert sk["pnone.s.test"].events("starttls") == [], sk["pnone.s.test"].events()
    (ev,) = wait_delivery(mtad, q["pnone.s.test"][0], status="sent")
    assert ev.get("tls", "none") == "none" and ev.get("auth") == "none", ev["_line"]

    expect_sent(mtad, q["pmay.s.test"][0], sk["pmay.s.test"], "none")
    expect_sent(mtad, q["pver.s.test"][0], sk["pver.s.test"], "verify")
    expect_deferred(mtad, *q["pvself.s.test"], r"4\.7\.5", reason=r"mx\.pvself\.s\.test")
    assert sk["pvself.s.test"].connections() >= 1
    no_message(sk["pvself.s.test"])
    # last: the insecure one also depends on the DNSSEC self-test
    for d in ("pdo.s.test", "pdou.u.test"):
        expect_deferred(mtad, *q[d], r"4\.7\.5", reason=re.escape("mx." + d), attempts=2)
        no_connection(sk[d])


# ---------------------------------------------------------------------------
# 14. DNSSEC self-test

def test_dnssec_selftest_wrong_anchor_fails_closed(env, tmp_path):
    """A dns.trust_anchor that does not match the lab root: the self-test
    logs status=failed, and mail to a secure domain (ee.s.test) and to an
    insecure one (ins.u.test) is deferred 4.4.3, no connection made."""
    bad = tmp_path / "bad.ds"
    bad.write_text(". 86400 IN DS 4711 13 2 %s\n" % _sha("not the lab root").upper())
    s1 = env.sink("mx.ee.s.test")
    s2 = env.sink("mx.ins.u.test")
    mtad = env.start(**{"dns.trust_anchor": str(bad)})
    evs = wait_until(lambda: mtad.events("dnssec_selftest"), 10,
                     "event=dnssec_selftest")
    assert evs[0].get("status") == "failed", evs[0]["_line"]
    q1, r1 = send(mtad, "ee.s.test")
    q2, r2 = send(mtad, "ins.u.test")
    expect_deferred(mtad, q1, r1, r"4\.4\.3")
    expect_deferred(mtad, q2, r2, r"4\.4\.3")
    no_connection(s1)
    no_connection(s2)


# ---------------------------------------------------------------------------
# 15. CNAMEs

def test_dane34_35_36_100_cname_tlsa_base(env):
    """DANE-36: mx.c36.s.test is a secure CNAME to an address in u.test;
    the TLSA at the original name is used: sent "dane 3 1 1", SNI = the
    original name; with mismatching TLSA there: deferred 4.7.5.
    DANE-34: all secure, TLSA at both names: the target's apply, SNI =
    target.  DANE-35: TLSA only at the original name: SNI = original."""
    names = ["c36", "c36bad", "c34", "c35"]
    sk = {n: env.sink("mx.%s.s.test" % n) for n in names}
    mtad = env.start()
    q = {n: send(mtad, "%s.s.test" % n) for n in names}
    expect_sent(mtad, q["c36"][0], sk["c36"], "dane 3 1 1", sni="mx.c36.s.test")
    expect_deferred(mtad, *q["c36bad"], r"4\.7\.5")
    no_message(sk["c36bad"])
    expect_sent(mtad, q["c34"][0], sk["c34"], "dane 3 1 1", sni="mxb.c34.s.test")
    expect_sent(mtad, q["c35"][0], sk["c35"], "dane 3 1 1", sni="mx.c35.s.test")


# ---------------------------------------------------------------------------
# TLS 1.3 post-handshake messages (not DANE-specific, found here)

def test_tls13_session_tickets_no_stall(env):
    """DANE-101 (TLS >= 1.2) with TLS 1.3 sinks: four DANE deliveries at
    once.  A TLS 1.3 server sends NewSessionTicket messages after the
    handshake; GnuTLS's gnutls_record_recv() returns GNUTLS_E_AGAIN after
    processing each one even when more records are buffered.  If mtad stops
    reading at that E_AGAIN while the EHLO reply already sits in its TLS
    input buffer, the session hangs until the 300 s timeout."""
    names = ["ee", "ee301", "ta", "ta201"]
    sk = {n: env.sink("mx.%s.s.test" % n, tls_max_version="TLSv1_3") for n in names}
    mtad = env.start()
    q = {n: send(mtad, "%s.s.test" % n)[0] for n in names}
    auth = {"ee": "dane 3 1 1", "ee301": "dane 3 0 1", "ta": "dane 2 1 1",
            "ta201": "dane 2 0 1"}
    for n in names:
        ev, rec = expect_sent(mtad, q[n], sk[n], auth[n], sni="mx.%s.s.test" % n)
        assert rec["tls_version"] == "TLSv1.3", rec


# ---------------------------------------------------------------------------
# 16. issue 18: policy corners

def _mail_commands(raw):
    """MAIL commands a RawSink received (in clear or in TLS)."""
    return [e for e in raw.events("command")
            if bytes(e["line"]).upper().startswith(b"MAIL")]


def _reset_sink(env, host):
    """A RawSink on host's address that offers STARTTLS, answers 220 and
    closes the connection before the handshake (a reset handshake)."""
    return env.sl.raw(addr=env.d.addr[host], port=env.d.port,
                      tls=env.d.certfiles[host], close_at="TLS")


def test_dane62_handshake_reset_may_retries_in_cleartext(env):
    """DANE-62 (choice, docs/security.md): no TLSA (secure NODATA), no
    MTA-STS, level may; the MX breaks the TLS handshake: mtad logs
    event=tls_fallback tls_fallback=cleartext with the handshake error,
    connects again and delivers in cleartext on the second connection
    (auth "none (tls_fallback=cleartext)"), and counts the failure for TLS
    reporting (policy type no-policy-found, validation-failure)."""
    s = _reset_sink(env, "mx.fb.s.test")
    mtad = env.start()
    qid, _ = send(mtad, "fb.s.test")
    (rec,) = s.wait_messages(1, timeout=15)
    assert not rec["tls"], rec
    assert rec["conn"] == 2, rec
    assert s.connections() == 2, s.connections()
    assert [e["conn"] for e in s.events("close_at")] == [1], s.events("close_at")
    (ev,) = wait_delivery(mtad, qid, status="sent")
    assert ev.get("tls", "none") == "none", ev["_line"]
    assert ev["auth"] == "none (tls_fallback=cleartext)", ev["_line"]
    (fb,) = mtad.events("tls_fallback", qid=qid)
    assert fb["tls_fallback"] == "cleartext", fb["_line"]
    assert fb["relay"].startswith("mx.fb.s.test["), fb["_line"]
    assert fb["error"], fb["_line"]
    _wait_count(mtad, ("fb.s.test", "no-policy-found", "validation-failure"))
    wait_gone(mtad, qid)


def test_dane62_handshake_reset_no_cleartext_for_encrypt_and_dane(env, tmp_path):
    """DANE-62 counterpart: the same reset under level encrypt (policy
    table) and with usable TLSA (DANE): deferred 4.7.5 naming the
    handshake, no cleartext retry, no MAIL FROM at the receiver."""
    pol = tmp_path / "tls-policy"
    pol.write_text("fbenc.s.test encrypt\n")
    s_enc = _reset_sink(env, "mx.fbenc.s.test")
    s_dane = _reset_sink(env, "mx.fbdane.s.test")
    mtad = env.start(**{"tls.policy_file": str(pol)})
    q1, r1 = send(mtad, "fbenc.s.test")
    q2, r2 = send(mtad, "fbdane.s.test")
    expect_deferred(mtad, q1, r1, r"4\.7\.5", reason=r"handshake")
    expect_deferred(mtad, q2, r2, r"4\.7\.5", reason=r"handshake")
    for sk in (s_enc, s_dane):
        assert sk.connections() >= 1
        assert _mail_commands(sk) == [], _mail_commands(sk)
        assert sk.transactions() == []
    assert mtad.events("tls_fallback") == [], mtad.events("tls_fallback")


def test_issue18_mx_skipped_logged_and_kept_as_evidence(env):
    """A bogus TLSA RRset at mx1 (pref 10), good TLSA at mx2 (pref 20),
    which answers 450 to RCPT: mx1 gets no connection; one info line
    event=mx_skipped host=mx1... reason=tlsa-bogus; the delivery line and
    the recipient's evidence (mtaq --json, mtactl show) name the skip."""
    s1 = env.sink("mx1.skipb.s.test")
    s2 = env.sink("mx2.skipb.s.test",
                  rcpt_replies={"bob@skipb.s.test": "450 4.2.0 try later"})
    mtad = env.start()
    qid, rcpt = send(mtad, "skipb.s.test")
    ev = wait_delivery(mtad, qid, status="deferred", timeout=15)[0]
    assert ev["relay"].startswith("mx2.skipb.s.test["), ev["_line"]
    assert ev["auth"] == "dane 3 1 1", ev["_line"]
    assert ev["mx_skipped"] == "mx1.skipb.s.test:tlsa-bogus", ev["_line"]
    sk = mtad.events("mx_skipped", qid=qid)
    assert sk and sk[0]["host"] == "mx1.skipb.s.test", sk
    assert sk[0]["reason"] == "tlsa-bogus", sk[0]["_line"]
    assert sk[0]["level"] == "info", sk[0]["_line"]
    st = wait_rcpt(mtad, qid, rcpt)
    assert "mx_skipped=mx1.skipb.s.test:tlsa-bogus" in st["evidence"], st
    assert "auth=dane 3 1 1" in st["evidence"], st
    show = mtad.run_tool([mtadtest.MTACTL, "-c", mtad.conf, "show", qid]).stdout
    assert b"mx_skipped=mx1.skipb.s.test:tlsa-bogus" in show, show
    no_connection(s1)
    assert s2.connections() >= 1


def test_issue18_dane_only_with_only_unusable_tlsa_refused(env, tmp_path):
    """dane-only (policy table entry; and tls.default_level) with a secure
    TLSA set of only unusable records (1 1 1; 0 0 1 + 1 1 1): the host is
    refused, deferred 4.7.5, no connection, so no MAIL FROM."""
    pol = tmp_path / "tls-policy"
    pol.write_text("do111.s.test dane-only\n")
    s1 = env.sink("mx.do111.s.test")
    s2 = env.sink("mx.pkix.s.test")
    mtad = env.start(**{"tls.policy_file": str(pol),
                        "tls.default_level": "dane-only"})
    q1, r1 = send(mtad, "do111.s.test")
    q2, r2 = send(mtad, "pkix.s.test")
    for q, r, h in ((q1, r1, "mx.do111.s.test"), (q2, r2, "mx.pkix.s.test")):
        expect_deferred(mtad, q, r, r"4\.7\.5", reason=r"unusable")
        (sk,) = mtad.events("mx_skipped", qid=q)[:1]
        assert sk["host"] == h and sk["reason"] == "tlsa-unusable", sk["_line"]
    for s in (s1, s2):
        no_connection(s)
        no_message(s)


def test_issue18_tlsa_over_64_records_refused(env):
    """A TLSA RRset of 65 records (64 unusable, then one usable that
    matches): more than mtad holds, so the host is refused rather than
    judged on a prefix: deferred 4.7.5, no connection."""
    s = env.sink("mx.t65.s.test")
    mtad = env.start()
    qid, rcpt = send(mtad, "t65.s.test")
    expect_deferred(mtad, qid, rcpt, r"4\.7\.5", reason=r"65 records, more than 64",
                    timeout=15)
    (sk,) = mtad.events("mx_skipped", qid=qid)[:1]
    assert sk["reason"] == "tlsa-too-many", sk["_line"]
    no_connection(s)


def test_issue18_mx_exchange_like_an_address_is_a_name(env):
    """An MX exchange "127.1.x.y." is a host name (RFC 5321 §5.1, RFC
    7672), not an address literal: its address lookup finds nothing, the
    message is deferred, the sink listening at 127.1.x.y gets no
    connection."""
    s = env.sl.aio(addr=env.d.addr["ipmx"], port=env.d.port)
    mtad = env.start()
    qid, rcpt = send(mtad, "ipmx.s.test")
    expect_deferred(mtad, qid, rcpt, r"4\.4\.[34]", reason=re.escape(env.d.addr["ipmx"]))
    no_connection(s)
