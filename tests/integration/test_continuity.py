"""Key continuity of MTA-STS destinations (issue 16 part 2): the real mtad
against the MTA-STS lab of test_sts.py (DNS lab, HTTPS policy lab, sinks).

tls.ca_file trusts the lab "WebPKI" CA and a second, "rogue" CA: a
certificate from the rogue CA for an MX name passes every MTA-STS check,
which is what key continuity is for.  Each test learns a domain's key on
first contact (mtactl policy show lists it), then swaps the sink of mx1
for one with another certificate and checks the event=tls_continuity line
(with both fingerprints), what arrived, and what the spool records.
"""
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

import delivlab  # noqa: E402  (sets up the lab's path)
import mtadtest  # noqa: E402
import sinks  # noqa: E402
from delivlab import wait_until  # noqa: E402
from sinks import sink_lab  # noqa: E402,F401  (fixture)
from test_sts import (StsLab, Env, send, expect_sent, expect_deferred,  # noqa: E402
                      no_message, log_of)
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


class ContLab(StsLab):
    def _build(self):
        self.rogue = sinks.make_ca("Rogue WebPKI CA")
        both = os.path.join(self.dir, "ca-both.pem")
        with open(both, "wb") as f:
            with open(self.https.ca_file, "rb") as g:
                f.write(g.read())
            f.write(self.rogue.cert_pem())
        self.ca_file = both
        # log mode: a second CA on mx1; rotation under the lab CA
        self.domain("clog.u.test", [(10, "mx1", "ok")])
        self.domain("crot.u.test", [(10, "mx1", "ok")])
        # hold mode: mx1 and mx2, mx2 down while mx1 shows the rogue CA
        self.domain("chold.u.test", [(10, "mx1", "ok"), (20, "mx2", "ok")])
        self.cert("mx1.clog.u.test", "rogue")
        self.cert("mx1.crot.u.test", "ok2")
        self.cert("mx1.chold.u.test", "rogue")
        # hold mode, a rotation to the second CA on both MX that heals
        self.domain("cheal.u.test", [(10, "mx1", "ok"), (20, "mx2", "ok")])
        self.cert("mx1.cheal.u.test", "rogue")
        self.cert("mx2.cheal.u.test", "rogue")

    def cert(self, host, kind):
        key = (host, kind)
        if key in self.certs or kind not in ("rogue", "ok2"):
            return super().cert(host, kind)
        c = sinks.issue(self.rogue if kind == "rogue" else self.ca, [host])
        self.certobj[key] = c
        self.certs[key] = c.write(os.path.join(self.dir, "certs"),
                                  "%s-%s" % (host, kind))
        return self.certs[key]


@pytest.fixture(scope="module")
def lab():
    missing = delivlab.lab_tools_missing()
    if missing:
        pytest.skip("%s missing (Debian knot, unbound, ldnsutils)" % missing)
    workdir = tempfile.mkdtemp(prefix="mtit-cont-", dir="/tmp")
    os.chmod(workdir, 0o711)  # reachable after mtad's privilege drop
    dns = delivlab.start_dns_lab()
    s = None
    try:
        s = ContLab(dns, workdir)
        yield s
    finally:
        if s is not None:
            s.https.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def env(lab, sink_lab, mtad_factory):
    return Env(lab, sink_lab, mtad_factory)


def spki(certobj):
    return certobj.tlsa(3, 1, 1).split()[-1]


def mtactl(mtad, *args, check=True):
    p = mtad.run_tool([mtadtest.MTACTL, "-c", mtad.conf] + list(args),
                      check=check)
    return subprocess.CompletedProcess(
        p.args, p.returncode, p.stdout.decode("utf-8", "replace"),
        p.stderr.decode("utf-8", "replace"))


def keys_shown(mtad, dom):
    """The key lines of mtactl policy show DOMAIN: [(host, state, leaf,
    issuer)]."""
    out = mtactl(mtad, "policy", "show", dom).stdout
    return re.findall(r"^key: (\S+) (trusted|held) leaf=([0-9a-f]{64}) "
                      r"issuer=([0-9a-f]{64}) first=\S+ last=\S+$", out, re.M)


def wait_keys(mtad, dom, pred, what):
    return wait_until(lambda: pred(keys_shown(mtad, dom)), 5.0,
                      lambda: "%s; policy show %s:\n%s" % (
                          what, dom, mtactl(mtad, "policy", "show", dom).stdout))


def learn(env, mtad, dom):
    """First contact: delivered through mx1 ("ok" certificate), the key
    and the lab CA recorded as trusted."""
    host = "mx1." + dom
    s = env.sink(host)
    qid, _ = send(mtad, dom, "first " + dom)
    expect_sent(mtad, qid, s, "mta-sts id=1")
    leaf = spki(env.s.certobj[(host, "ok")])
    ca = env.s.ca.tlsa(2, 1, 1).split()[-1]
    wait_keys(mtad, dom, lambda k: (host, "trusted", leaf, ca) in k,
              "first contact learns the key")
    assert not mtad.events("tls_continuity", domain=dom)
    return s, leaf, ca


def test_continuity_log_mode_second_ca_logged_and_delivered(env):
    """A certificate from a second trusted CA for the same MX name: log
    mode logs event=tls_continuity status=new_issuer with both
    fingerprints and delivers; the new key is learned."""
    mtad = env.start(**{"mta_sts.continuity": "log"})
    dom = "clog.u.test"
    s, leaf, ca = learn(env, mtad, dom)
    s.stop()
    r = env.sink("mx1." + dom, kind="rogue")
    qid, _ = send(mtad, dom, "rogue log")
    expect_sent(mtad, qid, r, "mta-sts id=1")
    (ev,) = mtad.events("tls_continuity", domain=dom)
    print(ev["_line"])
    rleaf = spki(env.s.certobj[("mx1." + dom, "rogue")])
    rca = env.s.rogue.tlsa(2, 1, 1).split()[-1]
    assert ev["status"] == "new_issuer"
    assert ev["host"] == "mx1." + dom
    assert (ev["key"], ev["issuer"]) == (rleaf, rca)
    assert (ev["known_key"], ev["known_issuer"]) == (leaf, ca)
    assert ev["action"] == "delivered"
    wait_keys(mtad, dom, lambda k: ("mx1." + dom, "trusted", rleaf, rca) in k
              and ("mx1." + dom, "trusted", leaf, ca) in k,
              "both keys on record")


def test_continuity_rotation_same_issuer_logged_only(env):
    """A new key under the known CA is a rotation: status=new_key, logged,
    delivered."""
    mtad = env.start(**{"mta_sts.continuity": "hold"})
    dom = "crot.u.test"
    s, leaf, ca = learn(env, mtad, dom)
    s.stop()
    r = env.sink("mx1." + dom, kind="ok2")
    qid, _ = send(mtad, dom, "rotation")
    expect_sent(mtad, qid, r, "mta-sts id=1")
    (ev,) = mtad.events("tls_continuity", domain=dom)
    print(ev["_line"])
    assert ev["status"] == "new_key"
    assert ev["key"] == spki(env.s.certobj[("mx1." + dom, "ok2")])
    assert ev["issuer"] == ca and ev["known_key"] == leaf
    assert ev["action"] == "delivered"


def test_continuity_hold_mode_deferred_until_accepted(env):
    """Hold mode: the second CA on mx1 (while the first key is on record
    for mx2) is refused with 4.7.5 and the mail deferred; the key is
    recorded as held; mtactl policy accept trusts it and the mail goes at
    the next attempt."""
    mtad = env.start(**{"mta_sts.continuity": "hold"})
    dom = "chold.u.test"
    s, leaf, ca = learn(env, mtad, dom)
    s.stop()
    # no key held yet: accept has nothing to do
    p = mtactl(mtad, "policy", "accept", dom, check=False)
    assert p.returncode == 1 and "no new key held" in p.stderr + p.stdout
    r = env.sink("mx1." + dom, kind="rogue")
    qid, _ = send(mtad, dom, "rogue hold")
    expect_deferred(mtad, qid, r"4\.\d\.\d+")
    evs = mtad.wait_event("tls_continuity", domain=dom, status="new_issuer")
    assert evs, log_of(mtad, dom=dom)
    ev = evs[0]
    print(ev["_line"])
    assert ev["action"] == "held" and ev["known_key"] == leaf
    # mx1 refused by continuity, mx2 down: the deferral names the last host
    no_message(r)
    rleaf = spki(env.s.certobj[("mx1." + dom, "rogue")])
    wait_keys(mtad, dom, lambda k: ("mx1." + dom, "held", rleaf,
                                    env.s.rogue.tlsa(2, 1, 1).split()[-1]) in k,
              "the held key on record")
    assert r.messages() == []
    out = mtactl(mtad, "policy", "accept", dom).stdout
    assert "accepted" in out
    wait_keys(mtad, dom, lambda k: ("mx1." + dom, "trusted", rleaf,
                                    env.s.rogue.tlsa(2, 1, 1).split()[-1]) in k,
              "accepted key trusted")
    mtactl(mtad, "flush", qid, check=False)
    expect_sent(mtad, qid, r, "mta-sts id=1", timeout=15.0)


HOLD = 3  # mta_sts.continuity_hold (seconds; the key's minimum is 1)


def test_continuity_hold_rotation_on_all_mx_heals(env):
    """Hold mode: a new issuer served by every MX of the domain is held at
    first (4.7.5, nothing sent, the keys held); once it has been seen on
    every MX for mta_sts.continuity_hold with no known key since, the
    change heals by itself: the mail goes without mtactl policy accept
    and the new keys are on record as trusted."""
    mtad = env.start(**{"mta_sts.continuity": "hold",
                        "mta_sts.continuity_hold": "%ds" % HOLD})
    dom = "cheal.u.test"
    h1, h2 = "mx1." + dom, "mx2." + dom
    # first contact learns the lab CA's key on mx1, then on mx2 (mx1 down)
    s1, leaf1, ca = learn(env, mtad, dom)
    s1.stop()
    s2 = env.sink(h2)
    qid, _ = send(mtad, dom, "first via mx2")
    expect_sent(mtad, qid, s2, "mta-sts id=1")
    leaf2 = spki(env.s.certobj[(h2, "ok")])
    wait_keys(mtad, dom, lambda k: (h2, "trusted", leaf2, ca) in k
              and (h1, "trusted", leaf1, ca) in k,
              "first contact learns the key of both MX")
    s2.stop()
    # the known keys' last sighting strictly before the new issuer's first
    # (the record counts whole seconds)
    time.sleep(1.1)
    r1 = env.sink(h1, kind="rogue")
    r2 = env.sink(h2, kind="rogue")
    rca = env.s.rogue.tlsa(2, 1, 1).split()[-1]
    rleaf1 = spki(env.s.certobj[(h1, "rogue")])
    rleaf2 = spki(env.s.certobj[(h2, "rogue")])
    t0 = time.time()
    qid, _ = send(mtad, dom, "rotation to the second CA")
    expect_deferred(mtad, qid, r"4\.7\.5")
    evs = mtad.wait_event("tls_continuity", domain=dom, status="new_issuer")
    assert evs, log_of(mtad, dom=dom)
    assert {e["host"] for e in evs} <= {h1, h2}
    assert all(e["action"] == "held" and e["issuer"] == rca for e in evs)
    # the new issuer is held on both MX
    wait_keys(mtad, dom, lambda k: (h1, "held", rleaf1, rca) in k
              and (h2, "held", rleaf2, rca) in k,
              "the new key held on both MX")
    no_message(r1)
    no_message(r2, settle=0)
    # retried within the hold period: still held
    mtactl(mtad, "flush", qid, check=False)
    time.sleep(0.5)
    if time.time() < t0 + HOLD - 0.5:
        assert r1.messages() == [] and r2.messages() == [], \
            log_of(mtad, qid)
    # after the hold period: delivered at a retry, no accept
    time.sleep(max(0.0, t0 + HOLD + 1.1 - time.time()))
    for _ in range(4):
        mtactl(mtad, "flush", qid, check=False)
        deadline = time.monotonic() + 3.0
        while not (r1.messages() or r2.messages()) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        if r1.messages() or r2.messages():
            break
    # either MX may heal first (each host's hold began at its own first
    # sight of the new issuer): the message arrives once, at one of them
    got, other = (r2, r1) if r2.messages() else (r1, r2)
    expect_sent(mtad, qid, got, "mta-sts id=1", timeout=5.0)
    assert other.messages() == []
    wait_keys(mtad, dom, lambda k: (h1, "trusted", rleaf1, rca) in k
              and (h2, "trusted", rleaf2, rca) in k
              and not any(st == "held" for (_, st, _, _) in k),
              "the healed keys trusted")
    p = mtactl(mtad, "policy", "accept", dom, check=False)
    assert p.returncode == 1, "healed, nothing left to accept:\n" + p.stdout
