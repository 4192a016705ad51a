"""REQUIRETLS and TLS-Required: No (RFC 8689) end to end: the real mtad
accepting over STARTTLS and delivering through the DNSSEC lab
(tests/lab/dnslab.py) to the lab's sinks (tests/lab/sinks.py).

Conformance ids from shared/reference/conformance.md section 4 (RTLS-nn)
are named in each test.  The lab's zones are built once per module: a
secure MX with a certificate from the lab WebPKI CA (in tls.ca_file), an
insecure MX (u.test), a secure MX whose TLSA never matches.

Run:  MTAD_BUILD_DIR=$PWD/build-asan /usr/bin/python3 -m pytest -q tests/integration/test_requiretls.py
"""
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

import delivlab  # noqa: E402
from delivlab import (SENDER, msg, wait_delivery, wait_until,  # noqa: E402
                      deliveries, wait_gone)
from smtpraw import RawSMTP, data_bytes  # noqa: E402
import sinks  # noqa: E402
from sinks import sink_lab  # noqa: E402,F401  (fixture)


class RtlsLab:
    def __init__(self, dns, certdir):
        self.dns = dns
        self.dir = certdir
        self.addr, self.certfiles, self.lines = {}, {}, {}
        self.ca_l = sinks.make_ca("Lab WebPKI Root CA")
        self.ca_file = self.ca_l.write_ca(os.path.join(certdir, "ca-l.pem"))
        other = sinks.self_signed(["other.test"])
        # secure MX, WebPKI-valid certificate (RTLS-20, -24, -26)
        for d in ("ok", "nokw", "prekw", "notls", "ndr"):
            self._simple(d + ".rt.s.test", "s.test.",
                         sinks.issue(self.ca_l, ["mx.%s.rt.s.test" % d]))
        # secure MX, self-signed (RTLS-25)
        self._simple("self.rt.s.test", "s.test.", sinks.self_signed(["mx.self.rt.s.test"]))
        # insecure MX (RTLS-21)
        self._simple("rt.u.test", "u.test.", sinks.issue(self.ca_l, ["mx.rt.u.test"]))
        # secure MX with a TLSA record that never matches (RTLS-31)
        h = self._simple("tlsa.rt.s.test", "s.test.", sinks.self_signed(["mx.tlsa.rt.s.test"]))
        self.port = delivlab.choose_port(list(self.addr.values()))
        self.lines["s.test."].append("_%d._tcp.%s. 60 IN TLSA %s"
                                     % (self.port, h, other.tlsa(3, 1, 1)))
        for zone, lines in self.lines.items():
            self.dns.add_zone_records(zone, lines)

    def _simple(self, dom, zone, cert):
        h = "mx." + dom
        self.addr[h] = sinks.alloc_addr()
        self.certfiles[h] = cert.write(self.dir, h)
        self.lines.setdefault(zone, []).extend([
            "%s. 60 IN MX 10 %s." % (dom, h),
            "%s. 60 IN A %s" % (h, self.addr[h])])
        return h


@pytest.fixture(scope="module")
def rtls():
    missing = delivlab.lab_tools_missing()
    if missing:
        pytest.skip("%s missing (Debian knot, unbound, ldnsutils)" % missing)
    certdir = tempfile.mkdtemp(prefix="mtit-rtls-", dir="/tmp")
    os.chmod(certdir, 0o711)  # reachable after mtad's privilege drop
    dns = delivlab.start_dns_lab()
    try:
        yield RtlsLab(dns, certdir)
    finally:
        dns.stop()
        shutil.rmtree(certdir, ignore_errors=True)


class Env:
    def __init__(self, lab, sl, factory):
        self.lab, self.sl, self.factory = lab, sl, factory

    def start(self, **extra):
        extra.setdefault("tls.ca_file", self.lab.ca_file)
        return self.factory(settings=delivlab.mtad_settings(
            self.lab.dns, self.lab.port, **extra))

    def sink(self, dom, requiretls=True, tls=True, **kw):
        h = "mx." + dom
        if tls:
            kw["tls"] = self.lab.certfiles[h]
            kw.setdefault("tls_max_version", "TLSv1_2")
        if requiretls:
            kw["ehlo_extra"] = ["REQUIRETLS"]
            kw["accept_params"] = ["REQUIRETLS"]
        return self.sl.aio(addr=self.lab.addr[h], port=self.lab.port, **kw)


@pytest.fixture
def env(rtls, sink_lab, mtad_factory):
    return Env(rtls, sink_lab, mtad_factory)


def submit_tls(mtad, rcpt, content, requiretls=True, sender=SENDER):
    """One message over STARTTLS, with the REQUIRETLS option."""
    c = RawSMTP(mtad.addr, mtad.port)
    try:
        assert c.greeting().code == 220
        r = c.ehlo("client.test")
        assert "REQUIRETLS" not in r.text, r  # RTLS-01: not before TLS
        assert c.starttls().code == 220
        r = c.ehlo("client.test")
        assert r.code == 250 and "REQUIRETLS" in r.text, r  # RTLS-01
        r = c.cmd("MAIL FROM:<%s>%s" % (sender, " REQUIRETLS" if requiretls else ""))
        assert r.code == 250, r
        assert c.cmd("RCPT TO:<%s>" % rcpt).code == 250
        assert c.cmd("DATA").code == 354
        c.send(data_bytes(content))
        r = c.reply()
        assert r.code == 250 and r.qid, r
        return r.qid
    finally:
        c.quit(wait=0.2)


def submit_clear(mtad, rcpt, content):
    c = RawSMTP(mtad.addr, mtad.port)
    try:
        assert c.greeting().code == 220
        assert c.ehlo("client.test").code == 250
        assert c.cmd("MAIL FROM:<%s>" % SENDER).code == 250
        assert c.cmd("RCPT TO:<%s>" % rcpt).code == 250
        assert c.cmd("DATA").code == 354
        c.send(data_bytes(content))
        r = c.reply()
        assert r.code == 250 and r.qid, r
        return r.qid
    finally:
        c.quit(wait=0.2)


def bounced(mtad, qid, dsn):
    (ev,) = wait_delivery(mtad, qid, status="bounced", timeout=15)
    print(ev["_line"])
    assert ev["dsn"] == dsn, ev["_line"]
    return ev


def ndr_of(mtad):
    """The NDR mtad queued (null sender; no sink listens at the sender's
    domain, so it stays queued)."""
    def find():
        return [m for m in mtad.queue().values() if m["sender"] == ""]
    (m,) = wait_until(find, 10, "an NDR in the queue")
    return m


def test_rtls03_cleartext_refused(env):
    """RTLS-03 (choice): REQUIRETLS outside TLS gets 530 5.7.10, nothing
    queued; RTLS-04: a value is a syntax error."""
    mtad = env.start()
    c = RawSMTP(mtad.addr, mtad.port)
    try:
        c.greeting()
        c.ehlo("client.test")
        r = c.cmd("MAIL FROM:<%s> REQUIRETLS" % SENDER)
        assert r.code == 530 and r.dsn == "5.7.10", r
        c.starttls()
        c.ehlo("client.test")
        r = c.cmd("MAIL FROM:<%s> REQUIRETLS=YES" % SENDER)
        assert r.code == 501 and r.dsn == "5.5.4", r
    finally:
        c.quit(wait=0.2)
    assert mtad.queue() == {}


def test_rtls02_20_sent_with_parameter(env):
    """RTLS-02: the message is tagged (mtaq --json requiretls=true);
    RTLS-20: secure MX, WebPKI-valid certificate, the peer lists
    REQUIRETLS: sent with MAIL FROM:<...> REQUIRETLS, auth=verify."""
    sink = env.sink("ok.rt.s.test")
    mtad = env.start()
    qid = submit_tls(mtad, "bob@ok.rt.s.test", msg("rtls20"))
    (rec,) = sink.wait_messages(1, timeout=10)
    assert "REQUIRETLS" in [o.upper() for o in rec["mail_options"]], rec
    assert rec["tls"], rec
    (ev,) = wait_delivery(mtad, qid, status="sent")
    assert ev["auth"] == "verify", ev["_line"]
    wait_gone(mtad, qid)


def test_rtls02_tagged_in_spool(env):
    """RTLS-02: mtaq --json shows requiretls=true while the message waits
    (the relayhost, a secure name, has a closed port: deferred).  An
    address-literal relayhost could never authenticate: that bounces."""
    mtad = env.start(**{"delivery.relayhost": "mx.ok.rt.s.test:9"})
    qid = submit_tls(mtad, "bob@ok.rt.s.test", msg("rtls02"))
    assert mtad.queue()[qid]["requiretls"] is True
    qid2 = submit_tls(mtad, "bob@ok.rt.s.test", msg("plain"), requiretls=False)
    assert mtad.queue()[qid2]["requiretls"] is False
    (ev,) = wait_delivery(mtad, qid, status="deferred", timeout=15)
    assert ev["dsn"].startswith("4."), ev["_line"]
    assert mtad.queue()[qid]["requiretls"] is True


def test_rtls21_insecure_mx_bounced(env):
    """RTLS-21: insecure MX and no MTA-STS: not sent (no connection),
    NDN 5.7.10; RTLS-28: the NDR has the headers only and is itself a
    REQUIRETLS message with the null sender."""
    sink = env.sink("rt.u.test")
    mtad = env.start()
    # the sender's domain has no listening MX: the NDR stays queued
    qid = submit_tls(mtad, "bob@rt.u.test", msg("rtls21", body=b"SECRET-BODY\r\n"),
                     sender="alice@ndr.rt.s.test")
    ev = bounced(mtad, qid, "5.7.10")
    assert "not DNSSEC/MTA-STS validated" in ev.get("response", ""), ev["_line"]
    assert sink.connections() == 0
    ndr = ndr_of(mtad)
    assert ndr["requiretls"] is True, ndr
    body = mtad.cat(ndr["qid"])
    assert b"text/rfc822-headers" in body
    assert b"SECRET-BODY" not in body
    assert b"Subject: rtls21" in body


def test_rtls24_no_keyword_every_mx_then_5730(env):
    """RTLS-24 run 2: the peer never lists REQUIRETLS: QUIT, no MAIL,
    NDN 5.7.30."""
    sink = env.sink("nokw.rt.s.test", requiretls=False)
    mtad = env.start()
    qid = submit_tls(mtad, "bob@nokw.rt.s.test", msg("rtls24"))
    bounced(mtad, qid, "5.7.30")
    assert sink.events("mail") == [], sink.events("mail")
    assert sink.connections() >= 1


def test_rtls24_keyword_only_before_tls(env):
    """RTLS-24 run 1: REQUIRETLS listed only before STARTTLS: 5.7.30."""
    h = "mx.prekw.rt.s.test"
    ext = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "REQUIRETLS", "STARTTLS"]
    sink = env.sl.raw(addr=env.lab.addr[h], port=env.lab.port,
                      tls=env.lab.certfiles[h], ehlo_ext=ext,
                      ehlo_ext_tls=["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"])
    mtad = env.start()
    qid = submit_tls(mtad, "bob@prekw.rt.s.test", msg("rtls24b"))
    bounced(mtad, qid, "5.7.30")
    assert sink.messages() == []


def test_rtls25_self_signed_bounced(env):
    """RTLS-25: certificate not valid (self-signed, no TLSA): NDN 5.7.10."""
    sink = env.sink("self.rt.s.test")
    mtad = env.start()
    qid = submit_tls(mtad, "bob@self.rt.s.test", msg("rtls25"))
    bounced(mtad, qid, "5.7.10")
    assert sink.messages() == []


def test_rtls26_no_starttls_bounced(env):
    """RTLS-26: the peer offers no STARTTLS: NDN 5.7.10, nothing sent."""
    sink = env.sink("notls.rt.s.test", tls=False)
    mtad = env.start()
    qid = submit_tls(mtad, "bob@notls.rt.s.test", msg("rtls26"))
    bounced(mtad, qid, "5.7.10")
    assert sink.messages() == []


def test_rtls27_tcp_failure_defers(env):
    """RTLS-27 (choice): a TCP failure (no sink listening) is an ordinary
    deferral, not an NDN."""
    mtad = env.start()
    qid = submit_tls(mtad, "bob@ok.rt.s.test", msg("rtls27"))
    (ev,) = wait_delivery(mtad, qid, status="deferred", timeout=15)
    assert ev["dsn"].startswith("4."), ev["_line"]
    assert [e for e in deliveries(mtad, qid) if e.get("status") == "bounced"] == []


def test_rtls31_tls_required_no_ignores_dane(env):
    """RTLS-06/31: TLS-Required: No from a relay client: the TLSA record
    that never matches is ignored; sent over unauthenticated TLS, logged
    reason=tls-required-no.  Without the header: deferred (DANE)."""
    sink = env.sink("tlsa.rt.s.test", requiretls=False)
    mtad = env.start()
    content = (b"TLS-Required: No\r\n" + msg("rtls31"))
    qid = submit_clear(mtad, "bob@tlsa.rt.s.test", content)
    (rec,) = sink.wait_messages(1, timeout=10)
    assert rec["tls"], rec
    (ev,) = wait_delivery(mtad, qid, status="sent")
    assert ev["auth"] == "none", ev["_line"]
    lowered = mtad.events("tls_policy_lowered", qid=qid)
    assert lowered and lowered[0]["reason"] == "tls-required-no"
    qid2 = submit_clear(mtad, "bob@tlsa.rt.s.test", msg("rtls31-control"))
    (ev,) = wait_delivery(mtad, qid2, status="deferred", timeout=15)
    assert ev["dsn"] == "4.7.5", ev["_line"]
    assert len(sink.messages()) == 1
