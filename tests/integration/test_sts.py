"""MTA-STS (RFC 8461) end to end: the real mtad fetching policies from the
HTTPS policy lab (tests/lab/httpslab.py), resolving through the DNSSEC lab
(tests/lab/dnslab.py) and delivering to the lab's sinks (tests/lab/sinks.py).

Issue #5 list.  Case ids from shared/reference/conformance.md section 1
(STS-nn) are named in each test; docs/mta-sts.md describes the behaviour.

Started once per module:
  * the DNS lab, with every test domain's records put in at start-up:
    MX, the MX hosts' A records (each host its own 127.1.X.Y),
    "_mta-sts.<d> TXT v=STSv1; id=1" and "mta-sts.<d> A <policy lab>";
    the MTA-STS domains are in the insecure zone u.test. so DANE never
    applies, except the DANE-vs-MTA-STS domains in s.test. (with TLSA);
  * one HttpsLab serving every mta-sts.<d> (chosen by SNI), scripted per
    domain; its CA is the lab "WebPKI" CA and is mtad's tls.ca_file, so it
    is trusted both for the policy fetch and for the MX certificates;
  * certificates for the MX hosts: "ok" (lab CA, SAN = MX name), "self",
    "expired", "wrong" (lab CA, SAN other.test only).

Each test starts the sinks it needs (all on one module-wide port P =
delivery.port, so TLSA owners _P._tcp.<host> can be set at start-up), one
mtad (mta_sts.https_port = the lab's port), submits mail and checks what
the sinks received (or that they saw no connection), mtad's event=delivery
lines (status, dsn, auth, response), its event=sts_* lines, and the policy
lab's request log.

Each test uses its own domains, so request counts are per test, and its own
mtad (its own spool, so its own policy cache).
"""
import os
import re
import shutil
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

import delivlab  # noqa: E402
from delivlab import (SENDER, msg, submit, wait_delivery, wait_gone,  # noqa: E402
                      wait_until, deliveries)
import httpslab  # noqa: E402  (path set up by delivlab)
import sinks  # noqa: E402
from sinks import sink_lab  # noqa: E402,F401  (fixture)

POLICY_PATH = "/.well-known/mta-sts.txt"


def _zone_of(name):
    name = name.rstrip(".")
    if name.endswith(".u.test"):
        return "u.test."
    assert name.endswith(".s.test"), name
    return "s.test."


class StsLab:
    """The module's DNS lab, policy lab, certificates and address plan."""

    def __init__(self, dns, workdir):
        self.dns = dns
        self.dir = workdir
        self.https = httpslab.HttpsLab(sinks.alloc_addr(),
                                       workdir=os.path.join(workdir, "https"))
        self.ca = self.https.ca
        self.ca_file = self.https.ca_file
        self.addr = {}       # host -> 127.1.X.Y
        self.certs = {}      # (host, kind) -> (cert.pem, key.pem)
        self.certobj = {}    # (host, kind) -> sinks.CertKey
        self.lines = {}      # zone -> record lines
        self.tlsa_recs = []  # (host, "u s m hex")
        self._build()
        self.port = delivlab.choose_port(list(self.addr.values()))
        for h, r in self.tlsa_recs:
            self._line(_zone_of(h), "_%d._tcp.%s. 60 IN TLSA %s" % (self.port, h, r))
        for zone, lines in self.lines.items():
            self.dns.add_zone_records(zone, lines)
        self.https.start()

    # -- building blocks ---------------------------------------------------
    def _line(self, zone, text):
        self.lines.setdefault(zone, []).append(text)

    def cert(self, host, kind):
        """Sink certificate files of the given kind for host (made once)."""
        key = (host, kind)
        if key not in self.certs:
            if kind == "ok":
                c = sinks.issue(self.ca, [host])
            elif kind == "self":
                c = sinks.self_signed([host])
            elif kind == "expired":
                c = sinks.issue(self.ca, [host], not_before=-30, not_after=-1)
            elif kind == "wrong":
                c = sinks.issue(self.ca, ["other.test"])
            elif kind == "cn":
                # C-cn: lab CA, the name only in the subject CN, no SAN
                c = sinks.issue(self.ca, [host], san=False)
            else:
                raise ValueError(kind)
            self.certobj[key] = c
            self.certs[key] = c.write(os.path.join(self.dir, "certs"),
                                      "%s-%s" % (host, kind))
        return self.certs[key]

    def host(self, host, kind="ok", a=True):
        self.addr[host] = sinks.alloc_addr()
        if a:
            self._line(_zone_of(host), "%s. 60 IN A %s" % (host, self.addr[host]))
        self.cert(host, kind)
        return host

    def domain(self, dom, mxs, txt_id="1", policy=True, **script):
        """dom with MX records mxs = [(pref, label, cert kind)], its TXT
        record and policy host (script: httpslab add_host options)."""
        z = _zone_of(dom)
        for pref, label, kind in mxs:
            h = self.host("%s.%s" % (label, dom), kind)
            self._line(z, "%s. 60 IN MX %d %s." % (dom, pref, h))
        if txt_id is not None:
            self._line(z, '_mta-sts.%s. 60 IN TXT "v=STSv1; id=%s"' % (dom, txt_id))
        if policy:
            self._line(z, "mta-sts.%s. 60 IN A %s" % (dom, self.https.addr))
            self.https.add_host(dom, **script)

    def set_txt(self, dom, txt_id):
        """Replace the _mta-sts TXT record (None: remove it)."""
        z = _zone_of(dom)
        if txt_id is None:
            self.dns.remove_records(z, "_mta-sts.%s." % dom, "TXT")
        else:
            self.dns.add_zone_records(
                z, ['_mta-sts.%s. 60 IN TXT "v=STSv1; id=%s"' % (dom, txt_id)],
                replace=True)

    # -- the domains of the tests ------------------------------------------
    def _build(self):
        pb = httpslab.policy_body
        ok1 = [(10, "mx1", "ok")]
        # 1. enforce, valid certificate
        self.domain("ok.u.test", ok1)
        # 2. enforce, bad certificates
        for kind in ("self", "expired", "wrong"):
            self.domain("b%s.u.test" % kind, [(10, "mx1", kind)])
        # 3. MX patterns: first MX not in the policy, second in it; the only
        # MX not in it; wildcard pattern with a two-label MX name first
        self.domain("skip.u.test", [(10, "bad", "ok"), (20, "mx2", "ok")])
        self.domain("only.u.test", [(10, "bad", "ok")])
        self.domain("wild.u.test", [(10, "a.mx1", "ok"), (20, "mx1", "ok")],
                    body=pb("wild.u.test", mx=["*.wild.u.test"]))
        # 4. STARTTLS stripped in front of a TLS sink with a valid cert
        self.domain("strip.u.test", ok1)
        self.addr["backend.strip"] = sinks.alloc_addr()
        self.certs[("backend.strip", "ok")] = self.cert("mx1.strip.u.test", "ok")
        # 5. testing mode: bad certificate; MX not in the policy
        self.domain("testing.u.test", [(10, "mx1", "self")],
                    body=pb("testing.u.test", mode="testing"))
        self.domain("testmx.u.test", [(10, "bad", "self")],
                    body=pb("testmx.u.test", mode="testing"))
        # 6. redirects (to another host, to another path on the same host);
        # the MX is self-signed: were the policy applied, nothing would go
        self.domain("redir.u.test", [(10, "mx1", "self")], status=301,
                    headers={"Location": "https://mta-sts.redirt.u.test" + POLICY_PATH})
        self.domain("redirt.u.test", [], txt_id=None)
        self.domain("redir2.u.test", [(10, "mx1", "self")], status=302,
                    headers={"Location": "https://mta-sts.redir2.u.test/moved/mta-sts.txt"})
        # 7. invalid policies; b64k: exactly 64 KiB is still valid (control)
        self.domain("big.u.test", [(10, "mx1", "self")], pad_to=65537)
        self.domain("b64k.u.test", [(10, "mx1", "self")], pad_to=65536)
        self.domain("html.u.test", [(10, "mx1", "self")], content_type="text/html")
        self.domain("noct.u.test", [(10, "mx1", "self")], content_type=None)
        self.domain("syntax.u.test", [(10, "mx1", "self")],
                    body=pb("syntax.u.test", mx=["mx1.syntax.u.test", "*"]))
        # 8. fetch fails with a cached policy; 10. restart keeps the cache
        for dom in ("cfail.u.test", "rst.u.test"):
            self.domain(dom, ok1)
            self.cert("mx1." + dom, "self")
        # 9. id change: v1 allows mx2 only; v2 (id=2) mx1 only
        self.domain("idch.u.test", [(10, "mx1", "ok"), (20, "mx2", "ok")],
                    body=pb("idch.u.test", mx=["mx2.idch.u.test"]))
        # 11. refresher: max_age 6 s
        self.domain("refr.u.test", ok1, body=pb("refr.u.test", max_age=6))
        # 12. DANE wins (s.test., TLSA 3 1 1 of the MX's certificate):
        # danemx: CA-issued cert, policy mx does not match the MX;
        # danecert: policy matches, the cert is self-signed (STS-121)
        self.domain("danemx.s.test", ok1,
                    body=pb("danemx.s.test", mx=["other.danemx.s.test"]))
        self.tlsa_recs.append(("mx1.danemx.s.test",
                               self.certobj[("mx1.danemx.s.test", "ok")].tlsa(3, 1, 1)))
        self.domain("danecert.s.test", [(10, "mx1", "self")])
        self.tlsa_recs.append(("mx1.danecert.s.test",
                               self.certobj[("mx1.danecert.s.test", "self")].tlsa(3, 1, 1)))

        # 13. issue 18: STS-96 (CN-only certificate) under enforce and under
        # level verify without MTA-STS (plus a SAN control); a testing
        # policy under level verify; DANE-62 (handshake reset) under enforce
        self.domain("cn.u.test", [(10, "mx1", "cn")])
        self.domain("vcn.u.test", [(10, "mx1", "cn")], txt_id=None, policy=False)
        self.domain("vsan.u.test", ok1, txt_id=None, policy=False)
        self.domain("vtest.u.test", [(10, "mx1", "self")],
                    body=pb("vtest.u.test", mode="testing"))
        self.domain("reset.u.test", ok1)

    # -- per test ----------------------------------------------------------
    def sink(self, sl, host, kind="ok", tls=True, **kw):
        """An AioSink on host's address at the module port, presenting the
        host's certificate of the given kind.  TLS 1.2 as in test_dane.py
        (keeps the cases independent of TLS 1.3 ticket handling)."""
        if tls:
            kw["tls"] = self.certs[(host, kind)]
            kw.setdefault("tls_max_version", "TLSv1_2")
        return sl.aio(addr=self.addr[host], port=self.port, **kw)

    def requests(self, dom, path=None):
        return [r for r in self.https.requests(dom)
                if path is None or r["path"] == path]


@pytest.fixture(scope="module")
def sts():
    missing = delivlab.lab_tools_missing()
    if missing:
        pytest.skip("%s missing (Debian knot, unbound, ldnsutils)" % missing)
    workdir = tempfile.mkdtemp(prefix="mtit-sts-", dir="/tmp")
    os.chmod(workdir, 0o711)  # reachable after mtad's privilege drop
    dns = delivlab.start_dns_lab()
    lab = None
    try:
        lab = StsLab(dns, workdir)
        yield lab
    finally:
        if lab is not None:
            lab.https.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class Env:
    def __init__(self, sts, sl, factory):
        self.s = sts
        self.sl = sl
        self.factory = factory
        self.mtad = None

    def start(self, **extra):
        s = delivlab.mtad_settings(self.s.dns, self.s.port, **{
            "tls.ca_file": self.s.ca_file,
            "mta_sts.https_port": str(self.s.https.port),
        })
        s.update({k.replace("__", "."): v for k, v in extra.items()})
        self.mtad = self.factory(settings=s)
        return self.mtad

    def sink(self, host, kind="ok", **kw):
        return self.s.sink(self.sl, host, kind=kind, **kw)


@pytest.fixture
def env(sts, sink_lab, mtad_factory):
    return Env(sts, sink_lab, mtad_factory)


# ---------------------------------------------------------------------------
# helpers

def send(mtad, dom, tag=None):
    rcpt = "bob@" + dom
    return submit(mtad, SENDER, [rcpt], msg(tag or dom)), rcpt


def log_of(mtad, qid=None, dom=None):
    lines = [e["_line"] for e in mtad.events()
             if (qid is None or e.get("qid") == qid)
             and (dom is None or e.get("domain") == dom
                  or dom in e.get("to", ""))]
    return "\n".join(lines[-25:])


def expect_sent(mtad, qid, sink, auth, n=1, timeout=10.0):
    """The sink got its n-th message (ours) over TLS; mtad logged
    status=sent for qid with this auth ("x*": prefix)."""
    try:
        recs = sink.wait_messages(n, timeout=timeout)
    except AssertionError:
        raise AssertionError("no message at %s; mtad log for qid %s:\n%s"
                             % (sink.endpoint, qid, log_of(mtad, qid)))
    rec = recs[n - 1]
    (ev,) = wait_delivery(mtad, qid, status="sent")
    print(ev["_line"])
    assert ev["dsn"].startswith("2."), ev["_line"]
    if auth.endswith("*"):
        assert ev.get("auth", "").startswith(auth[:-1]), ev["_line"]
    else:
        assert ev.get("auth") == auth, ev["_line"]
    assert rec["tls"], "message was not sent over TLS: %r" % rec
    assert re.search(r"TLS ?v?1\.[23]", ev.get("tls", "")), ev["_line"]
    wait_gone(mtad, qid)
    return ev, rec


def expect_deferred(mtad, qid, dsn, reason=None, timeout=10.0):
    """The first event=delivery line of qid: status=deferred, dsn matching
    the regex, response matching reason; nothing was sent."""
    evs = wait_delivery(mtad, qid, timeout=timeout)
    ev = evs[0]
    print(ev["_line"])
    assert ev["status"] == "deferred", "expected deferred, got:\n%s" % ev["_line"]
    assert re.fullmatch(dsn, ev["dsn"]), ev["_line"]
    if reason is not None:
        assert re.search(reason, ev.get("response", "")), ev["_line"]
    assert not deliveries(mtad, qid, status="sent"), log_of(mtad, qid)
    return ev


def no_message(sink, settle=0.3):
    time.sleep(settle)
    assert sink.messages() == [], "sink %s received: %r" % (
        sink.endpoint, [(r["mail_from"], r["rcpt_tos"]) for r in sink.messages()])


def sts_events(mtad, event, dom, since_start=False, **match):
    return mtad.events(event, since_start=since_start, domain=dom, **match)


def wait_sts(mtad, event, dom, timeout=5.0, **match):
    return wait_until(lambda: sts_events(mtad, event, dom, **match), timeout,
                      lambda: "event=%s domain=%s %r; sts lines:\n%s" % (
                          event, dom, match, "\n".join(
                              e["_line"] for e in mtad.events()
                              if e.get("event", "").startswith("sts"))))


# ---------------------------------------------------------------------------
# 1. enforce with a valid certificate

def test_sts01_sts90_enforce_valid_certificate_sent(env):
    """STS-01/40/90: TXT id=1, policy fetched once from
    https://mta-sts.<d>/.well-known/mta-sts.txt (SNI = Host = mta-sts.<d>),
    enforce; the MX presents a lab-CA cert for its name: sent with
    auth="mta-sts id=1", SNI = the MX name (STS-99).  STS-60: a second
    message with the same TXT id uses the cache (still one GET)."""
    s = env.sink("mx1.ok.u.test")
    mtad = env.start()
    qid, _ = send(mtad, "ok.u.test")
    ev, rec = expect_sent(mtad, qid, s, "mta-sts id=1")
    assert rec["sni"] == "mx1.ok.u.test", rec
    q2, _ = send(mtad, "ok.u.test", "second")
    expect_sent(mtad, q2, s, "mta-sts id=1", n=2)
    (req,) = env.s.requests("ok.u.test")
    assert req["method"] == "GET" and req["path"] == POLICY_PATH, req
    assert req["sni"] == "mta-sts.ok.u.test", req
    pols = sts_events(mtad, "sts_policy", "ok.u.test")
    fetched = [p for p in pols if p["source"] == "fetch"]
    assert len(fetched) == 1, pols
    pol = fetched[0]
    assert pol["id"] == "1" and pol["mode"] == "enforce", pol
    # the second message used the cached policy (STS-60)
    assert any(p["source"] == "cache" and p["id"] == "1" for p in pols), pols


# ---------------------------------------------------------------------------
# 2. enforce with bad certificates

def test_sts91_93_95_enforce_bad_certificates_deferred(env):
    """STS-93 (self-signed), STS-91 (expired), STS-95 (SAN other.test) under
    enforce: the handshake happens, nothing is sent, deferred 4.7.5 naming
    the policy id (STS-110: transient)."""
    doms = {k: "b%s.u.test" % k for k in ("self", "expired", "wrong")}
    sk = {k: env.sink("mx1." + d, kind=k) for k, d in doms.items()}
    mtad = env.start()
    q = {k: send(mtad, d)[0] for k, d in doms.items()}
    for k, d in doms.items():
        ev = expect_deferred(mtad, q[k], r"4\.7\.5",
                             r"MTA-STS \(id 1\).*mx1\.%s" % re.escape(d))
        # never reported as authenticated ("mta-sts-failed id=1" once the
        # refusal's outcome is logged, "none" before that)
        assert ev.get("auth") in ("none", "mta-sts-failed id=1"), ev["_line"]
    for k in doms:
        assert sk[k].connections() >= 1, k
        no_message(sk[k], settle=0)
        assert len(env.s.requests(doms[k])) == 1


# ---------------------------------------------------------------------------
# 3. MX patterns

def test_sts84_sts81_mx_not_in_policy_skipped(env):
    """STS-84: MX 10 bad.skip (not in the policy, a sink listens there)
    then MX 20 mx2.skip (in it): no connection to bad, sent via mx2.
    STS-81: pattern *.wild.u.test does not match a.mx1.wild.u.test (MX 10,
    skipped without connecting) but matches mx1.wild.u.test (MX 20)."""
    bad = env.sink("bad.skip.u.test")
    good = env.sink("mx2.skip.u.test")
    wbad = env.sink("a.mx1.wild.u.test")
    wgood = env.sink("mx1.wild.u.test")
    mtad = env.start()
    q1, _ = send(mtad, "skip.u.test")
    q2, _ = send(mtad, "wild.u.test")
    ev, _ = expect_sent(mtad, q1, good, "mta-sts id=1")
    assert ev["relay"].startswith("mx2.skip.u.test"), ev["_line"]
    ev, _ = expect_sent(mtad, q2, wgood, "mta-sts id=1")
    assert ev["relay"].startswith("mx1.wild.u.test"), ev["_line"]
    assert bad.connections() == 0, "connected to an MX not allowed by the policy"
    assert wbad.connections() == 0, "connected to an MX not allowed by the policy"


def test_sts82_only_mx_not_in_policy_deferred(env):
    """STS-82: the only MX is not in the policy: no connection, deferred
    4.7.5 "mta-sts mx mismatch" (never a bounce)."""
    bad = env.sink("bad.only.u.test")
    mtad = env.start()
    qid, _ = send(mtad, "only.u.test")
    expect_deferred(mtad, qid, r"4\.7\.5", r"mta-sts mx mismatch")
    time.sleep(0.3)
    assert bad.connections() == 0, "connected to an MX not allowed by the policy"
    assert not deliveries(mtad, qid, status="bounced")


# ---------------------------------------------------------------------------
# 4. STARTTLS stripped

def test_sts102_starttls_stripped_deferred(env):
    """STS-102: a proxy strips STARTTLS from the EHLO reply of the only MX
    (a TLS sink with a valid certificate behind it): never cleartext, the
    backend sees no MAIL, deferred 4.7.4 (conformance's recommended code)."""
    backend = env.sink("backend.strip")
    strip = env.sl.stripper(backend, addr=env.s.addr["mx1.strip.u.test"],
                            port=env.s.port)
    mtad = env.start()
    qid, _ = send(mtad, "strip.u.test")
    expect_deferred(mtad, qid, r"4\.7\.4", r"STARTTLS")
    assert strip.events("stripped"), strip.events()
    assert not backend.events("mail"), backend.events("mail")
    no_message(backend, settle=0)


# ---------------------------------------------------------------------------
# 5. testing mode

def test_sts112_sts83_testing_mode_delivers_and_logs(env):
    """STS-112: mode testing, self-signed MX cert: sent over TLS
    (auth=none), event=sts_testing_failure result=certificate-not-trusted.
    STS-83: mode testing, the MX is not in the policy: sent,
    event=sts_testing_failure result=validation-failure."""
    s1 = env.sink("mx1.testing.u.test", kind="self")
    s2 = env.sink("bad.testmx.u.test", kind="self")
    mtad = env.start()
    q1, _ = send(mtad, "testing.u.test")
    q2, _ = send(mtad, "testmx.u.test")
    expect_sent(mtad, q1, s1, "none")
    expect_sent(mtad, q2, s2, "none")
    (pol,) = sts_events(mtad, "sts_policy", "testing.u.test")
    assert pol["mode"] == "testing", pol
    (f1,) = wait_sts(mtad, "sts_testing_failure", "testing.u.test")
    assert f1["id"] == "1" and f1["host"] == "mx1.testing.u.test", f1["_line"]
    assert f1["result"] == "certificate-not-trusted", f1["_line"]
    # the bad host's certificate is self-signed too: both failures logged
    (f2,) = wait_sts(mtad, "sts_testing_failure", "testmx.u.test",
                     result="validation-failure")
    assert f2["host"] == "bad.testmx.u.test", f2["_line"]
    wait_sts(mtad, "sts_testing_failure", "testmx.u.test",
             result="certificate-not-trusted", host="bad.testmx.u.test")
    # the failures are recorded for TLS reporting (RFC 8460 result types)
    deadline = time.time() + 10
    while True:
        c = mtad.tlsrpt()
        if (c.get(("testing.u.test", "sts", "certificate-not-trusted"), 0) >= 1
                and c.get(("testmx.u.test", "sts", "validation-failure"), 0) >= 1):
            break
        assert time.time() < deadline, c
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# 6. redirects

def test_sts43_redirect_not_followed(env):
    """STS-43: the policy host answers 301 (Location: another policy host
    serving a valid policy) or 302 (Location: another path on the same
    host): the redirect is not followed (the targets get no request), no
    policy, delivery proceeds opportunistically to the self-signed MX
    (tls=y, auth=none)."""
    s1 = env.sink("mx1.redir.u.test", kind="self")
    s2 = env.sink("mx1.redir2.u.test", kind="self")
    mtad = env.start()
    q1, _ = send(mtad, "redir.u.test")
    q2, _ = send(mtad, "redir2.u.test")
    expect_sent(mtad, q1, s1, "none")
    expect_sent(mtad, q2, s2, "none")
    for dom, code in (("redir.u.test", "301"), ("redir2.u.test", "302")):
        (f,) = sts_events(mtad, "sts_fetch_failed", dom)
        assert f["status"] == "HTTP_STATUS", f["_line"]
        assert f["kept"] == "none", f["_line"]
        assert len(env.s.requests(dom, POLICY_PATH)) == 1
        assert not sts_events(mtad, "sts_policy", dom)
    assert env.s.requests("redirt.u.test") == []
    assert env.s.requests("redir2.u.test", "/moved/mta-sts.txt") == []


# ---------------------------------------------------------------------------
# 7. invalid policies

def test_sts45_47_48_34_invalid_policy_no_policy(env):
    """A policy that cannot be used means no MTA-STS (no cache): each MX
    presents a self-signed cert and the mail is sent opportunistically
    (auth=none).  STS-48: 65537-byte body (TOO_BIG); STS-45: Content-Type
    text/html; STS-47: no Content-Type (CONTENT_TYPE); STS-34: one bad mx
    pattern "*" (invalid).  Control: a 65536-byte body is valid, so that
    domain's self-signed MX is refused (deferred 4.7.5)."""
    cases = {"big.u.test": "TOO_BIG", "html.u.test": "CONTENT_TYPE",
             "noct.u.test": "CONTENT_TYPE", "syntax.u.test": "invalid"}
    sk = {d: env.sink("mx1." + d, kind="self") for d in list(cases) + ["b64k.u.test"]}
    mtad = env.start()
    q = {d: send(mtad, d)[0] for d in sk}
    for d, status in cases.items():
        expect_sent(mtad, q[d], sk[d], "none")
        (f,) = sts_events(mtad, "sts_fetch_failed", d)
        assert f["status"] == status, f["_line"]
        assert f["kept"] == "none", f["_line"]
        assert not sts_events(mtad, "sts_policy", d), d
    expect_deferred(mtad, q["b64k.u.test"], r"4\.7\.5", r"MTA-STS \(id 1\)")
    (pol,) = sts_events(mtad, "sts_policy", "b64k.u.test")
    assert pol["mode"] == "enforce", pol
    no_message(sk["b64k.u.test"], settle=0)


# ---------------------------------------------------------------------------
# 8. a failed fetch keeps the cached policy

def test_sts62_sts13_fetch_fails_cached_policy_enforced(env):
    """STS-62: policy id=1 (enforce) cached by a first delivery; then the
    MX presents a self-signed cert, the TXT id becomes 2 and the policy
    host answers 500: the refetch fails (event=sts_fetch_failed kept=
    "cached policy") and the cached enforce policy still refuses the MX
    (deferred 4.7.5, id 1).  STS-13: with the TXT record removed the
    cached policy is still enforced, and nothing is fetched."""
    dom, mx = "cfail.u.test", "mx1.cfail.u.test"
    s = env.sink(mx)
    mtad = env.start()
    q1, _ = send(mtad, dom, "first")
    expect_sent(mtad, q1, s, "mta-sts id=1")
    assert len(env.s.requests(dom)) == 1

    s.stop()
    s2 = env.sink(mx, kind="self")
    env.s.https.set(dom, status=500)
    env.s.set_txt(dom, "2")
    q2, _ = send(mtad, dom, "second")
    expect_deferred(mtad, q2, r"4\.7\.5", r"MTA-STS \(id 1\).*%s" % re.escape(mx))
    f = wait_sts(mtad, "sts_fetch_failed", dom)[0]
    assert f["status"] == "HTTP_STATUS" and f["kept"] == "cached policy", f["_line"]
    n = len(env.s.requests(dom))
    assert n >= 2, n
    assert s2.connections() >= 1
    no_message(s2, settle=0)

    env.s.set_txt(dom, None)
    q3, _ = send(mtad, dom, "third")
    expect_deferred(mtad, q3, r"4\.7\.5", r"MTA-STS \(id 1\)")
    no_message(s2, settle=0)
    # q2 is retried meanwhile (id 2 in DNS: may refetch); q3 must not fetch
    # once the TXT is gone, but its retries overlap with q2's: only check
    # that no successful policy replaced the cache
    assert not [e for e in sts_events(mtad, "sts_policy", dom) if e["id"] != "1"]
    print("GETs for %s: %d, sts_fetch_failed lines: %d" % (
        dom, len(env.s.requests(dom)), len(sts_events(mtad, "sts_fetch_failed", dom))))


# ---------------------------------------------------------------------------
# 9. id change

def test_sts61_id_change_refetch(env):
    """STS-61: policy id=1 allows mx2 only: sent via mx2 (mx1 untouched).
    Then TXT id=2 and the policy allows mx1 only: a new GET, event=
    sts_policy source=fetch id=2, and the next message goes to mx1 with
    auth="mta-sts id=2"."""
    dom = "idch.u.test"
    s1 = env.sink("mx1." + dom)
    s2 = env.sink("mx2." + dom)
    mtad = env.start()
    q1, _ = send(mtad, dom, "first")
    ev, _ = expect_sent(mtad, q1, s2, "mta-sts id=1")
    assert ev["relay"].startswith("mx2." + dom), ev["_line"]
    assert s1.connections() == 0
    assert len(env.s.requests(dom)) == 1

    env.s.https.set(dom, body=httpslab.policy_body(dom, mx=["mx1." + dom]))
    env.s.set_txt(dom, "2")
    q2, _ = send(mtad, dom, "second")
    ev, _ = expect_sent(mtad, q2, s1, "mta-sts id=2")
    assert ev["relay"].startswith("mx1." + dom), ev["_line"]
    assert len(env.s.requests(dom)) == 2
    pols = sts_events(mtad, "sts_policy", dom)
    assert [(p["id"], p["source"]) for p in pols] == [("1", "fetch"), ("2", "fetch")], \
        "\n".join(p["_line"] for p in pols)
    assert len(s2.messages()) == 1


# ---------------------------------------------------------------------------
# 10. restart keeps the cache

def test_sts68_restart_keeps_cached_policy(env):
    """STS-68: a first delivery caches policy id=1 (enforce).  mtad is
    stopped, the policy host answers 500, the MX now presents a
    self-signed cert, mtad starts again on the same spool: the cached
    policy is used (no new GET, event=sts_policy source=cache id=1) and
    the MX is refused (deferred 4.7.5, id 1)."""
    dom, mx = "rst.u.test", "mx1.rst.u.test"
    s = env.sink(mx)
    mtad = env.start()
    q1, _ = send(mtad, dom, "first")
    expect_sent(mtad, q1, s, "mta-sts id=1")
    assert mtad.stop() == 0
    s.stop()
    env.s.https.set(dom, status=500)
    s2 = env.sink(mx, kind="self")
    mtad.start()
    q2, _ = send(mtad, dom, "second")
    expect_deferred(mtad, q2, r"4\.7\.5", r"MTA-STS \(id 1\).*%s" % re.escape(mx))
    no_message(s2, settle=0)
    assert len(env.s.requests(dom)) == 1, "policy refetched after restart"
    assert not sts_events(mtad, "sts_fetch_failed", dom, since_start=True)
    # the documented log contract (mtasts.h LOG: source=cache|fetch)
    pols = sts_events(mtad, "sts_policy", dom, since_start=True)
    assert [(p["id"], p["source"]) for p in pols][:1] == [("1", "cache")], (
        "no event=sts_policy source=cache after the restart; sts lines "
        "since the restart:\n%s" % "\n".join(
            e["_line"] for e in mtad.events(since_start=True)
            if e.get("event", "").startswith("sts")))


# ---------------------------------------------------------------------------
# 11. the refresher

def test_sts65_refresher_renews_before_expiry(env):
    """STS-65 / RFC 8461 §10.2: policy max_age 6 s, refresh_interval 1 s.
    After one delivery caches it, with no more mail the refresher GETs the
    policy again before it expires (within 6 s of the first GET) and logs
    event=sts_refresh."""
    dom = "refr.u.test"
    s = env.sink("mx1." + dom)
    mtad = env.start(mta_sts__refresh_interval="1s")
    qid, _ = send(mtad, dom)
    expect_sent(mtad, qid, s, "mta-sts id=1")
    (first,) = env.s.requests(dom)
    reqs = wait_until(lambda: (lambda r: r if len(r) >= 2 else None)(env.s.requests(dom)),
                      9.0, lambda: "a refresh GET; sts lines:\n%s" % "\n".join(
                          e["_line"] for e in mtad.events()
                          if e.get("event", "").startswith("sts")))
    dt = reqs[1]["t"] - first["t"]
    assert 0 < dt < 6.0, "refresh GET %.2f s after the first (max_age 6)" % dt
    (ref,) = wait_sts(mtad, "sts_refresh", dom)[:1]
    assert ref["id"] == "1" and ref["source"] == "fetch", ref["_line"]
    assert len(deliveries(mtad)) == 1, "no mail was sent meanwhile"


# ---------------------------------------------------------------------------
# 12. DANE wins (section 1.9)

def test_sts121_dane_wins_over_sts_mx_mismatch(env):
    """Pinned choice (DESIGN.md "DANE wins", conformance §1.9): a domain in
    s.test. whose MX has valid DANE TLSA (3 1 1) and an enforce MTA-STS
    policy whose mx pattern does NOT match the MX: DANE applies and the
    message is sent with auth=dane (MTA-STS is not consulted for a DANE
    host)."""
    s = env.sink("mx1.danemx.s.test")
    mtad = env.start()
    qid, _ = send(mtad, "danemx.s.test")
    expect_sent(mtad, qid, s, "dane 3 1 1")


def test_sts121_dane_wins_over_sts_certificate(env):
    """STS-121 as in conformance §1.9: TLSA 3 1 1 matches the MX's
    self-signed certificate, the enforce MTA-STS policy lists the MX (it
    would fail on the WebPKI check): sent with auth=dane."""
    s = env.sink("mx1.danecert.s.test", kind="self")
    mtad = env.start()
    qid, _ = send(mtad, "danecert.s.test")
    expect_sent(mtad, qid, s, "dane 3 1 1")


# ---------------------------------------------------------------------------
# 13. issue 18: DNS-ID only, precedence, no cleartext under enforce

def _wait_tlsrpt(mtad, key, timeout=10):
    deadline = time.time() + timeout
    while True:
        c = mtad.tlsrpt()
        if c.get(key, 0) >= 1:
            return c
        assert time.time() < deadline, (key, c)
        time.sleep(0.1)


def test_sts96_cn_only_certificate_refused_under_enforce(env):
    """STS-96: enforce policy, the MX presents a lab-CA certificate with its
    name only in the subject CN and no subjectAltName: a DNS-ID is
    required (RFC 8461 §4.2, RFC 6125): deferred 4.7.5, nothing sent,
    counted as certificate-host-mismatch.  (STS-01 is the SAN control.)"""
    s = env.sink("mx1.cn.u.test", kind="cn")
    mtad = env.start()
    qid, _ = send(mtad, "cn.u.test")
    ev = expect_deferred(mtad, qid, r"4\.7\.5",
                         r"MTA-STS \(id 1\).*mx1\.cn\.u\.test.*subjectAltName")
    assert ev.get("auth") in ("none", "mta-sts-failed id=1"), ev["_line"]
    assert s.connections() >= 1
    no_message(s)
    _wait_tlsrpt(mtad, ("cn.u.test", "sts", "certificate-host-mismatch"))


def test_sts96_verify_level_dns_id_only(env):
    """STS-96 for tls.default_level = verify (no MTA-STS at either domain):
    the CN-only certificate is refused (4.7.5), the lab-CA certificate
    with the MX name as SAN is accepted (auth=verify)."""
    s_cn = env.sink("mx1.vcn.u.test", kind="cn")
    s_ok = env.sink("mx1.vsan.u.test")
    mtad = env.start(**{"tls.default_level": "verify"})
    q1, _ = send(mtad, "vcn.u.test")
    q2, _ = send(mtad, "vsan.u.test")
    expect_sent(mtad, q2, s_ok, "verify")
    ev = expect_deferred(mtad, q1, r"4\.7\.5", r"mx1\.vcn\.u\.test.*subjectAltName")
    assert ev.get("auth") in ("none", "verify-failed"), ev["_line"]
    assert s_cn.connections() >= 1
    no_message(s_cn)


def test_issue18_testing_policy_never_lowers_verify(env):
    """A destination's MTA-STS testing policy never lowers the operator's
    level (docs/security.md precedence): tls.default_level = verify, the
    domain publishes mode testing, its MX is self-signed: deferred 4.7.5,
    nothing sent; the policy failure is still logged and counted."""
    s = env.sink("mx1.vtest.u.test", kind="self")
    mtad = env.start(**{"tls.default_level": "verify"})
    qid, _ = send(mtad, "vtest.u.test")
    ev = expect_deferred(mtad, qid, r"4\.7\.5", r"mx1\.vtest\.u\.test")
    assert ev.get("auth") in ("none", "verify-failed"), ev["_line"]
    assert s.connections() >= 1
    no_message(s)
    (pol,) = sts_events(mtad, "sts_policy", "vtest.u.test")[:1]
    assert pol["mode"] == "testing", pol
    wait_sts(mtad, "sts_testing_failure", "vtest.u.test",
             result="certificate-not-trusted")
    _wait_tlsrpt(mtad, ("vtest.u.test", "sts", "certificate-not-trusted"))


def test_dane62_handshake_reset_under_sts_enforce_no_cleartext(env):
    """DANE-62 counterpart for MTA-STS enforce: the only MX (allowed by
    the policy) answers 220 to STARTTLS and closes before the handshake:
    deferred 4.7.5, never retried in cleartext, no MAIL FROM at it."""
    h = "mx1.reset.u.test"
    raw = env.sl.raw(addr=env.s.addr[h], port=env.s.port,
                     tls=env.s.certs[(h, "ok")], close_at="TLS")
    mtad = env.start()
    qid, _ = send(mtad, "reset.u.test")
    expect_deferred(mtad, qid, r"4\.7\.5", r"handshake")
    assert raw.connections() >= 1
    mails = [e for e in raw.events("command")
             if bytes(e["line"]).upper().startswith(b"MAIL")]
    assert mails == [], mails
    assert raw.transactions() == []
    assert mtad.events("tls_fallback") == [], mtad.events("tls_fallback")
