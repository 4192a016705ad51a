"""mtactl explain (issue 12 item 4) and mtactl policy refresh/purge observed
in the MTA-STS cache and in the next delivery (issue 12 item 3), against the
real mtad, the DNSSEC lab, the MTA-STS policy lab and the lab's sinks.

The lab is test_sts.py's StsLab with this module's own domains:
  dx.s.test    DANE: MX mx1 (self-signed), TLSA 3 1 1 of its key
  dxbad.s.test DANE: MX mx1 (lab-CA cert), TLSA 3 1 1 of another key
  sx.u.test    MTA-STS enforce, id=1, MX mx1 (lab-CA cert)
  ix.u.test    insecure zone, no MTA-STS: opportunistic
  bgx.b.s.test MX in the bogus zone b.s.test. (expired signatures)
  pr.u.test    MTA-STS enforce, for policy refresh/purge

explain runs inside mtad (EXPLAIN control verb) with mtad's resolver, trust
anchor, DNSSEC self-test state, policy cache and policy table, and the
decision comes from policy.c.  --connect connects, runs STARTTLS, shows the
chain and the verdict, and never sends MAIL (asserted at the sinks).
"""
import json
import os
import re
import shutil
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, HERE)

import delivlab  # noqa: E402
from delivlab import SENDER, msg, submit, wait_delivery, wait_until  # noqa: E402
import sinks  # noqa: E402
from sinks import sink_lab  # noqa: E402,F401  (fixture)
import test_sts  # noqa: E402

MTACTL = None


class ExplainLab(test_sts.StsLab):
    def _build(self):
        self.domain("dx.s.test", [(10, "mx1", "self")], txt_id=None, policy=False)
        self.tlsa_recs.append(("mx1.dx.s.test",
                               self.certobj[("mx1.dx.s.test", "self")].tlsa(3, 1, 1)))
        self.domain("dxbad.s.test", [(10, "mx1", "ok")], txt_id=None, policy=False)
        self.tlsa_recs.append(("mx1.dxbad.s.test",
                               sinks.self_signed(["other.test"]).tlsa(3, 1, 1)))
        self.domain("sx.u.test", [(10, "mx1", "ok")])
        self.domain("ix.u.test", [(10, "mx1", "ok")], txt_id=None, policy=False)
        self._line("b.s.test.", "bgx.b.s.test. 60 IN MX 10 mx.bgx.b.s.test.")
        self._line("b.s.test.", "mx.bgx.b.s.test. 60 IN A 127.0.0.9")
        self.domain("pr.u.test", [(10, "mx1", "ok")])


@pytest.fixture(scope="module")
def lab():
    missing = delivlab.lab_tools_missing()
    if missing:
        pytest.skip("%s missing (Debian knot, unbound, ldnsutils)" % missing)
    workdir = tempfile.mkdtemp(prefix="mtit-explain-", dir="/tmp")
    os.chmod(workdir, 0o711)  # reachable after mtad's privilege drop
    dns = delivlab.start_dns_lab()
    lb = None
    try:
        lb = ExplainLab(dns, workdir)
        yield lb
    finally:
        if lb is not None:
            lb.https.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def mtad(lab, mtad_factory, build):
    global MTACTL
    MTACTL = os.path.join(build, "mtactl")
    s = delivlab.mtad_settings(lab.dns, lab.port, **{
        "tls.ca_file": lab.ca_file,
        "mta_sts.https_port": str(lab.https.port),
    })
    m = mtad_factory(settings=s)
    evs = wait_until(lambda: m.events("dnssec_selftest"), 10, "event=dnssec_selftest")
    assert evs[0].get("status") == "ok", evs[0]["_line"]
    return m


def ctl(m, *args):
    p = m.run_tool([MTACTL, "-c", m.conf] + list(args), check=False, timeout=60)
    for k in ("stdout", "stderr"):
        v = getattr(p, k)
        if isinstance(v, bytes):
            setattr(p, k, v.decode("utf-8", "replace"))
    return p


def explain(m, dom, *opts):
    p = ctl(m, "explain", dom, *opts)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    for line in ([] if "--json" in opts else p.stdout.splitlines()):
        assert len(line) <= 100, "line longer than 100 columns: %r" % line
    if "--json" in opts:
        return p.stdout
    # continuation lines (wrapped at 100 columns) joined back
    return re.sub(r"\n {9}(?=\S)", " ", p.stdout)


def has(out, pattern):
    assert re.search(pattern, out, re.M), "no /%s/ in:\n%s" % (pattern, out)


def test_explain_dane_domain(lab, mtad):
    """DANE-50 seen by explain: secure MX, secure address, usable TLSA
    3 1 1 -> connect at level dane-only with the DANE verifier, TLS
    required, counted under policy type tlsa."""
    out = explain(mtad, "dx.s.test")
    has(out, r"^dnssec +self-test passed")
    has(out, r"^table +no tls\.policy_file entry")
    has(out, r"^mta-sts +no policy in force")
    has(out, r"^mx +OK, dnssec SECURE: 10 mx1\.dx\.s\.test$")
    has(out, r"^host +mx1\.dx\.s\.test port %d$" % lab.port)
    has(out, r"^addr +secure: %s$" % re.escape(lab.addr["mx1.dx.s.test"]))
    has(out, r"^tlsa +_%d\._tcp\.mx1\.dx\.s\.test: secure, 1 record, 1 usable$" % lab.port)
    has(out, r"^tlsa +3 1 1 [0-9a-f]{32}\.\.\. usable$")
    has(out, r"^decision +mx1\.dx\.s\.test: connect level=dane-only verifier=dane "
             r"starttls=required policy=tlsa$")
    has(out, r"^why +usable DNSSEC-signed TLSA: DANE authentication mandatory")
    has(out, r"^result +1 of 1 host usable now$")


def test_explain_sts_domain(lab, mtad):
    """STS-01/90 seen by explain: the policy (id, mode, patterns, expiry)
    fetched now, then cached; enforce -> level verify, WebPKI verifier."""
    out = explain(mtad, "sx.u.test")
    has(out, r"^mta-sts +id=1 mode=enforce max_age=604800 fetched now, expires \S+Z$")
    has(out, r"^sts-mx +mx1\.sx\.u\.test mx2\.sx\.u\.test$")
    has(out, r"^mx +OK, dnssec INSECURE: 10 mx1\.sx\.u\.test$")
    has(out, r"^tlsa +not looked up \(MX RRset not secure\)$")
    has(out, r"^decision +mx1\.sx\.u\.test: connect level=verify verifier=sts "
             r"starttls=required policy=sts$")
    has(out, r"^why +MTA-STS enforce")
    # the lookup cached it (as a delivery would): the second run says so
    def cached():
        o = explain(mtad, "sx.u.test")
        return o if re.search(r"^mta-sts +id=1 mode=enforce .*cached, fetched", o, re.M) else None
    wait_until(cached, 5, "explain showing the cached policy")
    n = len(lab.requests("sx.u.test"))
    assert n >= 1
    has(explain(mtad, "sx.u.test"), r"^mta-sts +id=1 mode=enforce .*cached, fetched")
    assert len(lab.requests("sx.u.test")) == n, "a cached policy was fetched again"


def test_explain_bogus_domain(lab, mtad):
    """DANE-04 seen by explain: a bogus MX answer defers the destination,
    no host is looked at."""
    out = explain(mtad, "bgx.b.s.test")
    has(out, r"^mx +BOGUS, dnssec BOGUS")
    has(out, r"^decision +bgx\.b\.s\.test: defer 4\.4\.3 ")
    has(out, r"^why +.*bgx\.b\.s\.test")
    has(out, r"^result +no host tried: mail for this destination is deferred$")
    assert not re.search(r"^host ", out, re.M), out


def test_explain_insecure_domain_json(lab, mtad):
    """DANE-02 seen by explain: insecure MX, no MTA-STS -> opportunistic
    (level may, no verifier, cleartext retry allowed); --json parses."""
    out = explain(mtad, "ix.u.test")
    has(out, r"^mx +OK, dnssec INSECURE: 10 mx1\.ix\.u\.test$")
    has(out, r"^addr +insecure: ")
    has(out, r"^decision +mx1\.ix\.u\.test: connect level=may verifier=none "
             r"starttls=if-offered cleartext-retry policy=no-policy-found$")
    has(out, r"^why +opportunistic")
    j = json.loads(explain(mtad, "ix.u.test", "--json"))
    assert j["ok"] is True and j["domain"] == "ix.u.test"
    tags = [(x["tag"], x["text"]) for x in j["lines"]]
    assert ("result", "1 of 1 host usable now") in tags, tags


def test_explain_connect_dane_pass_and_wrong_cert_fail(lab, mtad, sink_lab):
    """--connect: the DANE host's chain (subject, issuer, SPKI SHA-256) and
    "pass" with auth dane 3 1 1 (DANE-50); a host whose certificate does not
    match its TLSA -> "fail" 4.7.5 with the matcher's reason (DANE-55).
    Neither sink saw MAIL FROM."""
    good = lab.sink(sink_lab, "mx1.dx.s.test", kind="self")
    bad = lab.sink(sink_lab, "mx1.dxbad.s.test", kind="ok")
    out = explain(mtad, "dx.s.test", "--connect")
    spki = lab.certobj[("mx1.dx.s.test", "self")].tlsa(3, 1, 1).split()[-1].lower()
    has(out, r"^connect +mx1\.dx\.s\.test\[%s\]:%d starttls=required$"
        % (re.escape(lab.addr["mx1.dx.s.test"]), lab.port))
    has(out, r"^tls +TLS1\.\d \S+, SNI mx1\.dx\.s\.test$")
    has(out, r"^cert +0 subject: .*mx1\.dx\.s\.test")
    has(out, r"^cert +0 issuer: ")
    has(out, r"^cert +0 spki-sha256: %s$" % spki)
    has(out, r"^cert +0 valid: \S+Z \.\. \S+Z$")
    has(out, r"^verdict +pass: auth=dane 3 1 1$")
    has(out, r"^connect +EHLO after STARTTLS answered; QUIT \(no MAIL sent\)$")
    out = explain(mtad, "dxbad.s.test", "--connect")
    has(out, r"^cert +0 subject: ")
    has(out, r"^verdict +fail: 4\.7\.5 .*(result tlsa-invalid)")
    assert not re.search(r"^verdict +pass", out, re.M), out
    time.sleep(0.3)
    for s in (good, bad):
        assert s.connections() >= 1, s.events()
        assert s.events("mail") == [], "MAIL reached %s: %r" % (s.endpoint, s.events("mail"))
        assert s.messages() == []


def test_explain_usage_and_stopped_daemon(lab, mtad):
    p = ctl(mtad, "explain")
    assert p.returncode == 2 and "DOMAIN" in p.stderr, (p.stdout, p.stderr)
    p = ctl(mtad, "explain", "bad/name")
    assert p.returncode == 2, (p.stdout, p.stderr)
    mtad.stop()
    p = ctl(mtad, "explain", "ix.u.test")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "mtad is not running" in p.stderr, p.stderr


def _show(m, dom):
    p = ctl(m, "policy", "show", dom)
    return p.stdout + p.stderr


def test_policy_refresh_and_purge_seen_in_cache_and_delivery(lab, mtad, sink_lab):
    """policy refresh fetches and caches (policy show before/after); the
    next delivery uses the cache (no fetch); policy purge empties it; the
    delivery after the purge fetches again (STS-13, issue 12 item 3)."""
    dom = "pr.u.test"
    sink = lab.sink(sink_lab, "mx1." + dom, kind="ok")
    assert "no cached policy" in _show(mtad, dom), _show(mtad, dom)
    p = ctl(mtad, "policy", "refresh", dom)
    assert p.returncode == 0 and "refreshed id=1 mode=enforce" in p.stdout, (p.stdout, p.stderr)
    assert len(lab.requests(dom)) == 1
    out = _show(mtad, dom)
    assert "mta-sts id: 1" in out and "mode: enforce" in out, out
    # the next delivery: from the cache, authenticated by MTA-STS
    qid = submit(mtad, SENDER, ["a@" + dom], msg("one"))
    ev = wait_delivery(mtad, qid)[0]
    assert ev["status"] == "sent" and ev["auth"].startswith("mta-sts"), ev["_line"]
    assert len(lab.requests(dom)) == 1, lab.requests(dom)
    # purge: gone from the cache, and the next delivery fetches again
    p = ctl(mtad, "policy", "purge", dom)
    assert p.returncode == 0 and "purged" in p.stdout, (p.stdout, p.stderr)
    assert "no cached policy" in _show(mtad, dom), _show(mtad, dom)
    qid = submit(mtad, SENDER, ["b@" + dom], msg("two"))
    ev = wait_delivery(mtad, qid)[0]
    assert ev["status"] == "sent" and ev["auth"].startswith("mta-sts"), ev["_line"]
    assert len(lab.requests(dom)) == 2, lab.requests(dom)
    wait_until(lambda: "mta-sts id: 1" in _show(mtad, dom), 5, "policy cached again")
    assert len(sink.messages()) == 2


def test_explain_routes(lab, mtad_factory, build):
    """mtactl explain shows the routing table's rule (delivery.routes_file):
    hold and refuse end the trace with what delivery would record; a rule
    with a from clause is used only for a matching --from (and said to be
    passed over without one); relay walks the rule's host with its
    level=; an mx rule's level= wins over DANE/MTA-STS like a table
    entry."""
    global MTACTL
    MTACTL = os.path.join(build, "mtactl")
    routes = os.path.join(lab.dir, "routes-explain")
    with open(routes, "w") as f:
        f.write('held.test hold\n'
                'refused.test refuse "5.7.1 not to them"\n'
                'ix.u.test from corp.test relay [127.0.0.1]:%d level=none '
                'helo=out.corp.test\n'
                'dx.s.test mx level=verify fallback=[127.0.0.1]:%d '
                'fallback_after=2\n' % (lab.port, lab.port))
    os.chmod(routes, 0o644)
    s = delivlab.mtad_settings(lab.dns, lab.port, **{
        "tls.ca_file": lab.ca_file,
        "mta_sts.https_port": str(lab.https.port),
        "delivery.routes_file": routes,
    })
    m = mtad_factory(settings=s)
    wait_until(lambda: m.events("dnssec_selftest"), 10, "event=dnssec_selftest")

    out = explain(m, "held.test")
    has(out, r"^route +delivery\.routes_file line 1: held\.test hold$")
    has(out, r"^result +held by the routing table: .*4\.3\.2")
    assert not re.search(r"^(mx|host|decision) ", out, re.M), out

    out = explain(m, "refused.test")
    has(out, r"^route +delivery\.routes_file line 2: refused\.test refuse$")
    has(out, r"^result +refused by the routing table: recipients bounce "
             r"\(550 5\.7\.1 not to them\)")

    out = explain(m, "ix.u.test")
    has(out, r"^route +delivery\.routes_file: rules with a from clause were "
             r"passed over")
    has(out, r"^mx +OK, dnssec INSECURE: 10 mx1\.ix\.u\.test$")

    out = explain(m, "ix.u.test", "--from", "someone@corp.test")
    has(out, r"^route +delivery\.routes_file line 3: ix\.u\.test from "
             r"corp\.test relay \[127\.0\.0\.1\]$")
    has(out, r"^route +options: level=none helo=out\.corp\.test$")
    has(out, r"^table +the route's level=none")
    has(out, r"^route +relay \[127\.0\.0\.1\]:%d \(no MX, no MTA-STS\)$" % lab.port)
    assert not re.search(r"^mx ", out, re.M), out
    has(out, r"^decision +\[127\.0\.0\.1\]: connect level=none")

    # another sender: the rule does not apply, MX delivery as usual
    out = explain(m, "ix.u.test", "--from", "<>")
    assert "line 3" not in out and "passed over" not in out, out
    has(out, r"^route +no delivery\.routes_file rule matches$")

    out = explain(m, "dx.s.test")
    has(out, r"^route +delivery\.routes_file line 4: dx\.s\.test mx$")
    has(out, r"^route +options: level=verify$")
    has(out, r"^route +fallback=\[127\.0\.0\.1\]:%d once a recipient has had "
             r"2 attempts" % lab.port)
    has(out, r"^table +the route's level=verify")
    has(out, r"^mta-sts +not looked up: the table entry rules$")
    has(out, r"^decision +mx1\.dx\.s\.test: connect level=verify")

    p = ctl(m, "explain", "ix.u.test", "--from", "bad sender@x y")
    assert p.returncode == 2 and "--from" in p.stderr, (p.stdout, p.stderr)
