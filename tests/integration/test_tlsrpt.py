"""TLSRPT (RFC 8460): counters per policy domain, UTC day, policy and
result type, and the report `mtactl tlsrpt show` prints (the JSON that
would be sent).  Uses the MTA-STS lab of test_sts.py.

Not covered yet (the sender is not built): https POST, mail to a sink,
the _smtp._tls lookup, "no report about report mail" end to end."""
import datetime
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from test_sts import (env, sts, send, expect_sent, expect_deferred,  # noqa: F401,E402
                      _wait_tlsrpt)
from delivlab import wait_delivery  # noqa: F401,E402
from sinks import sink_lab  # noqa: F401,E402  (fixture)

RESULT_TYPES = {
    "starttls-not-supported", "certificate-host-mismatch",
    "certificate-expired", "certificate-not-trusted", "validation-failure",
    "tlsa-invalid", "dnssec-invalid", "dane-required",
    "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
}
DT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def check_schema(rep):
    """RFC 8460 §4.4 (RPT-10..14): keys, types, no extra top-level keys."""
    assert set(rep) == {"organization-name", "date-range", "contact-info",
                        "report-id", "policies"}, rep.keys()
    assert isinstance(rep["organization-name"], str)
    assert re.match(r"^[^@\s]+@[^@\s]+$", rep["contact-info"])
    assert isinstance(rep["report-id"], str) and rep["report-id"]
    dr = rep["date-range"]
    assert DT.match(dr["start-datetime"]) and DT.match(dr["end-datetime"])
    assert dr["start-datetime"].endswith("T00:00:00Z")       # RPT-30
    assert isinstance(rep["policies"], list)                  # RPT-11
    for p in rep["policies"]:
        pol = p["policy"]
        assert pol["policy-type"] in ("sts", "tlsa", "no-policy-found")
        assert all(isinstance(x, str) for x in pol["policy-string"])
        assert isinstance(pol["policy-domain"], str)
        assert all(isinstance(x, str) for x in pol["mx-host"])
        s = p["summary"]
        for k in ("total-successful-session-count",
                  "total-failure-session-count"):
            assert isinstance(s[k], int) and not isinstance(s[k], bool)
        fsum = 0
        for f in p.get("failure-details", []):
            assert f["result-type"] in RESULT_TYPES, f
            assert isinstance(f["failed-session-count"], int)
            for k in ("sending-mta-ip", "receiving-mx-hostname",
                      "receiving-ip"):
                if k in f:
                    assert isinstance(f[k], str)
            fsum += f["failed-session-count"]
        assert fsum == s["total-failure-session-count"]


def show(mtad, domain):
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = mtad.run_tool([mtad_mtactl(), "-c", mtad.conf, "tlsrpt", "show",
                         domain, "--day", day]).stdout.decode()
    m = re.search(r"^report:\n(\{.*\})$", out, re.M)
    assert m, out
    return json.loads(m.group(1)), out


def mtad_mtactl():
    from mtadtest import MTACTL
    return MTACTL


def test_rpt10_rpt21_report_json_counts_equal_deliveries(env):
    """RPT-10..15, RPT-21: two messages sent under an MTA-STS enforce
    policy, one refused for a CN-only certificate (another policy
    domain): the reports' JSON validates against the §4.4 schema and the
    counts equal the deliveries made."""
    s_ok = env.sink("mx1.ok.u.test")
    env.sink("mx1.cn.u.test", kind="cn")
    mtad = env.start()
    for i in range(2):
        qid, _ = send(mtad, "ok.u.test", tag="ok%d" % i)
        expect_sent(mtad, qid, s_ok, "mta-sts id=1")
    qid, _ = send(mtad, "cn.u.test")
    expect_deferred(mtad, qid, r"4\.7\.5", r"subjectAltName")
    _wait_tlsrpt(mtad, ("cn.u.test", "sts", "certificate-host-mismatch"))

    rep, _ = show(mtad, "ok.u.test")
    check_schema(rep)
    [p] = rep["policies"]
    assert p["policy"]["policy-type"] == "sts"
    assert p["policy"]["policy-domain"] == "ok.u.test"
    ps = p["policy"]["policy-string"]
    assert ps[0] == "version: STSv1" and "mode: enforce" in ps   # RPT-15
    assert any(x.startswith("mx: ") for x in ps)
    assert p["summary"] == {"total-successful-session-count": 2,
                            "total-failure-session-count": 0}

    rep, _ = show(mtad, "cn.u.test")
    check_schema(rep)
    [p] = rep["policies"]
    assert p["summary"]["total-successful-session-count"] == 0
    assert p["summary"]["total-failure-session-count"] >= 1
    f = p["failure-details"][0]
    assert f["result-type"] == "certificate-host-mismatch"
    assert f["receiving-mx-hostname"] == "mx1.cn.u.test"
    assert re.match(r"^127\.\d+\.\d+\.\d+$", f["receiving-ip"]), f
    assert re.match(r"^127\.", f["sending-mta-ip"]), f
