"""Certificate Transparency for MTA-STS destinations (issue 16), end to end.

The MTA-STS lab of test_sts.py (DNSSEC lab, HTTPS policy lab, sinks) with
test CT logs of our own (tests/lab/ctlab.py: ECDSA keys generated here) and
a log list naming them (tls.ct_log_list); mtad runs with
tls.require_sct = 2.  Each ct-<case>.u.test domain has one MX whose
certificate (issued by the lab CA, which is tls.ca_file) carries an
embedded SCT list built for that case, signed by the test logs over the
RFC 6962 precert entry:

  ok2      A (Operator One) + B (Operator Two)      -> delivered
  none     no SCT extension                         -> ct=missing
  one      A only                                   -> ct=missing
  sameop   A + C (both Operator One)                -> ct=one-operator
  badsig   A with a flipped signature byte + B      -> ct=invalid
  other    A signed over another certificate + B    -> ct=invalid
  retired  R (retired log) + A                      -> ct=invalid
  future   A timestamped a year ahead + B           -> ct=invalid

Refused: 4.7.5, deferred, nothing at the sink, the reason in the delivery
line (auth "mta-sts-failed id=1 ct=<reason>" and the response) and in the
spool's evidence (mtaq --json).  A DANE destination (s.test, TLSA 3 1 1 of
a certificate without SCTs) ignores the CT setting.
"""
import json
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "lib"))

import delivlab  # noqa: E402
from delivlab import deliveries  # noqa: E402
import ctlab  # noqa: E402  (path set up by delivlab)
from sinks import sink_lab  # noqa: E402,F401  (fixture)
import test_sts as T  # noqa: E402

FUTURE_MS = ctlab._now_ms() + 365 * 86400000

CASES = {
    "ok2": lambda L: [{"log": L["A"]}, {"log": L["B"]}],
    "none": lambda L: None,
    "one": lambda L: [{"log": L["A"]}],
    "sameop": lambda L: [{"log": L["A"]}, {"log": L["C"]}],
    "badsig": lambda L: [{"log": L["A"], "tamper": True}, {"log": L["B"]}],
    "other": lambda L: [{"log": L["A"], "tbs_of": L["other"]}, {"log": L["B"]}],
    "retired": lambda L: [{"log": L["R"]}, {"log": L["A"]}],
    "future": lambda L: [{"log": L["A"], "ts_ms": FUTURE_MS}, {"log": L["B"]}],
}
REFUSED = {"none": "missing", "one": "missing", "sameop": "one-operator",
           "badsig": "invalid", "other": "invalid", "retired": "invalid",
           "future": "invalid"}


class CtLab(T.StsLab):
    """StsLab with only the CT domains."""

    def _build(self):
        self.logs = {
            "A": ctlab.CtLog("Test Log A", "Operator One"),
            "B": ctlab.CtLog("Test Log B", "Operator Two"),
            "C": ctlab.CtLog("Test Log C", "Operator One"),
            "R": ctlab.CtLog("Test Log R", "Operator Three", state="retired"),
        }
        self.log_list = ctlab.write_log_list(
            os.path.join(self.dir, "log_list.json"), list(self.logs.values()))
        other, _ = ctlab.issue(self.ca, ["other.test"], scts=None)
        L = dict(self.logs, other=other)
        for case, scts in CASES.items():
            dom = "ct-%s.u.test" % case
            host = "mx1." + dom
            ck, _ = ctlab.issue(self.ca, [host], scts=scts(L))
            self.certobj[(host, "ct")] = ck
            self.certs[(host, "ct")] = ck.write(
                os.path.join(self.dir, "certs"), "%s-ct" % host)
            self.domain(dom, [(10, "mx1", "ct")])
        # DANE wins: a certificate without SCTs, pinned by TLSA 3 1 1
        self.domain("ctdane.s.test", [(10, "mx1", "ok")])
        self.tlsa_recs.append(("mx1.ctdane.s.test",
                               self.certobj[("mx1.ctdane.s.test", "ok")].tlsa(3, 1, 1)))


@pytest.fixture(scope="module")
def ct():
    missing = delivlab.lab_tools_missing()
    if missing:
        pytest.skip("%s missing (Debian knot, unbound, ldnsutils)" % missing)
    workdir = tempfile.mkdtemp(prefix="mtit-ct-", dir="/tmp")
    os.chmod(workdir, 0o711)  # reachable after mtad's privilege drop
    dns = delivlab.start_dns_lab()
    lab = None
    try:
        lab = CtLab(dns, workdir)
        yield lab
    finally:
        if lab is not None:
            lab.https.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def env(ct, sink_lab, mtad_factory):
    return T.Env(ct, sink_lab, mtad_factory)


def test_issue16_ct_required_sct_cases(env):
    """tls.require_sct = 2: 2 valid SCTs from 2 operators delivered; no
    SCT, one SCT, two from the same operator, a broken signature, an SCT
    over another certificate, a retired log, a future timestamp refused
    (4.7.5, ct=<reason>), nothing sent; the reason kept in the spool."""
    s = env.s
    m = env.start(tls__ct_log_list=s.log_list, tls__require_sct="2")
    sinks_by = {c: env.sink("mx1.ct-%s.u.test" % c, kind="ct") for c in CASES}
    qids = {c: T.send(m, "ct-%s.u.test" % c)[0] for c in CASES}

    T.expect_sent(m, qids["ok2"], sinks_by["ok2"], "mta-sts id=1")
    for case, reason in REFUSED.items():
        ev = T.expect_deferred(m, qids[case], r"4\.7\.5", reason="ct=" + reason)
        assert ev["auth"] == "mta-sts-failed id=1 ct=%s" % reason, ev["_line"]
        assert "Certificate Transparency" in ev["response"], ev["_line"]
        T.no_message(sinks_by[case], settle=0)
    # the evidence stays with the recipient (mtaq --json)
    q = m.queue()
    for case, reason in REFUSED.items():
        assert qids[case] in q, q.keys()
        text = json.dumps(q[qids[case]])
        assert "ct=" + reason in text, text
    # per-SCT detail in event=ct
    det = {e.get("domain"): e for e in m.events("ct")}
    assert "log retired" in det["ct-retired.u.test"]["detail"]
    assert "timestamp in the future" in det["ct-future.u.test"]["detail"]
    assert "bad signature" in det["ct-badsig.u.test"]["detail"]
    assert "bad signature" in det["ct-other.u.test"]["detail"]
    for c in REFUSED:
        assert not deliveries(m, qids[c], status="sent")


def test_issue16_ct_off_by_default(env):
    """require_sct = 0 (default): a leaf without SCTs is delivered."""
    m = env.start()
    sink = env.sink("mx1.ct-none.u.test", kind="ct")
    qid, _ = T.send(m, "ct-none.u.test")
    T.expect_sent(m, qid, sink, "mta-sts id=1")


def test_issue16_dane_ignores_ct(env):
    """A DANE destination (TLSA 3 1 1, certificate without SCTs) is
    delivered under tls.require_sct = 2: CT never applies to DANE."""
    s = env.s
    m = env.start(tls__ct_log_list=s.log_list, tls__require_sct="2")
    sink = env.sink("mx1.ctdane.s.test")
    qid, _ = T.send(m, "ctdane.s.test")
    T.expect_sent(m, qid, sink, "dane 3 1 1")
    assert not m.events("ct")


def test_issue16_require_sct_needs_log_list(env):
    """tls.require_sct without tls.ct_log_list is a configuration error;
    a list that does not parse stops start-up."""
    s = env.s
    bad = os.path.join(s.dir, "bad_list.json")
    with open(bad, "w") as f:
        json.dump({"operators": [{"name": "x", "logs": [{"log_id": "AA=="}]}]}, f)
    for extra in ({"tls__require_sct": "2"},
                  {"tls__ct_log_list": bad, "tls__require_sct": "2"}):
        with pytest.raises(Exception):
            env.start(**extra)


def test_issue16_log_list_stale_and_sighup(env):
    """A list older than tls.ct_log_list_max_age is logged as stale at
    start; SIGHUP re-reads the list: without log B, the ok2 certificate's
    SCT from B no longer counts (ct=invalid)."""
    import signal
    import time
    s = env.s
    path = os.path.join(s.dir, "reload_list.json")
    logs = list(s.logs.values())
    ctlab.write_log_list(path, logs, list_ms=ctlab._now_ms() - 10 * 86400000)
    m = env.start(tls__ct_log_list=path, tls__require_sct="2",
                  tls__ct_log_list_max_age="1d")
    st = (m.wait_event("ct_log_list_stale", timeout=5) or [None])[0]
    assert st is not None and int(st["age_s"]) >= 10 * 86400 - 60, st
    sink = env.sink("mx1.ct-ok2.u.test", kind="ct")
    qid, _ = T.send(m, "ct-ok2.u.test")
    T.expect_sent(m, qid, sink, "mta-sts id=1")
    ctlab.write_log_list(path, [lg for lg in logs if lg.description != "Test Log B"])
    m.signal(signal.SIGHUP)
    assert m.wait_event("reloaded", timeout=5)
    time.sleep(0.2)
    qid2, _ = T.send(m, "ct-ok2.u.test", tag="after reload")
    ev = T.expect_deferred(m, qid2, r"4\.7\.5", reason="ct=invalid")
    assert "log not in the list" in m.events("ct")[-1]["detail"], ev["_line"]
