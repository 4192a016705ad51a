"""TLSRPT (RFC 8460): counters per policy domain, UTC day, policy and
result type, and the report `mtactl tlsrpt show` prints (the JSON that
would be sent).  Uses the MTA-STS lab of test_sts.py.

The reporter (tlsrpt_send.c) is covered by test_rpt45_rpt40: https POST,
mail to a sink, the _smtp._tls lookup, no report about report mail, the
report mail's DKIM signature (RPT-43, Debian's dkimpy with a stubbed DNS).
Not covered yet: retry back-off."""
import datetime
import time
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


# ---- the reporter (tlsrpt_send.c): https POST and mail -----------------

import email  # noqa: E402
import email.policy  # noqa: E402
import gzip  # noqa: E402
import http.server  # noqa: E402
import ssl  # noqa: E402
import threading  # noqa: E402

import sinks as _sinks  # noqa: E402


class Collector:
    """A loopback HTTPS collector (RPT-45): a certificate from the lab CA
    for host, records every POST (path, headers, body)."""

    def __init__(self, ca, host, workdir):
        self.posts = []
        self.addr = _sinks.alloc_addr()
        cert, key = _sinks.issue(ca, [host]).write(workdir, "collector")
        posts = self.posts

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                posts.append({"path": self.path,
                              "ctype": self.headers.get("Content-Type"),
                              "body": self.rfile.read(n)})
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer((self.addr, 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def _today():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def test_rpt45_rpt40_reports_sent_by_https_and_mail(env, tmp_path):
    """RPT-01/06/45: `_smtp._tls.ok.u.test` has an https rua (a loopback
    collector with a lab-CA certificate) and a mailto rua (a sink): after
    two deliveries, `mtactl tlsrpt send --day <today>` POSTs the gzip JSON
    (application/tlsrpt+gzip) and queues the report mail.  RPT-40..42:
    the mail's headers and multipart/report layout; the counts equal the
    deliveries made.  RPT-44: the report mail is not counted itself (no
    counters for the rua's domain).  RPT-43: the report mail carries a
    DKIM signature of the submitter domain (selector tlsrpt, no l=) over
    the TLS-Report-* headers that Debian's dkimpy verifies.  Once sent,
    the day is marked reported and a second round sends nothing."""
    import base64
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "reporter.pem").write_bytes(rk.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "dkim.keys").write_text(
        "reporter.test tlsrpt reporter.pem rsa\n")
    pub = base64.b64encode(rk.public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    dkim_txt = {"tlsrpt._domainkey.reporter.test.": "v=DKIM1; k=rsa; p=" + pub}

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        v = dkim_txt.get(name)
        return v.encode() if v is not None else None

    lab = env.s
    dns = lab.dns
    # ok.u.test: the MTA-STS enforce domain of the lab
    mx = "mx1.ok.u.test"
    col = Collector(lab.ca, "rpt.ok.u.test", str(tmp_path))
    rmx = "mx1.rptmail.u.test"
    lab.addr[rmx] = _sinks.alloc_addr()
    lab.cert(rmx, "ok")
    dns.add_zone_records("u.test.", [
        "rpt.ok.u.test. 60 IN A %s" % col.addr,
        '_smtp._tls.ok.u.test. 60 IN TXT "v=TLSRPTv1; rua=https://'
        'rpt.ok.u.test:%d/tlsrpt,mailto:reports@rptmail.u.test"' % col.port,
        "rptmail.u.test. 60 IN MX 10 %s." % rmx,
        "%s. 60 IN A %s" % (rmx, lab.addr[rmx]),
    ])
    try:
        s_rep = env.sink(mx)
        s_mail = env.sink(rmx)
        mtad = env.start(tlsrpt__enabled="1",
                         tlsrpt__submitter="reporter.test",
                         dkim__keys_file=str(tmp_path / "dkim.keys"))
        for i in range(2):
            qid, _ = send(mtad, "ok.u.test", tag="r%d" % i)
            wait_delivery(mtad, qid, status="sent")
        s_rep.wait_messages(2)
        _wait_tlsrpt(mtad, ("ok.u.test", "sts", "successful-session"))
        out = mtad.run_tool([mtad_mtactl(), "-c", mtad.conf, "tlsrpt",
                             "send", "--day", _today()]).stdout.decode()
        print(out)
        assert re.search(r"ok\.u\.test https posted", out), out
        assert re.search(r"ok\.u\.test mail queued", out), out

        # https (RPT-45, RPT-33)
        (post,) = col.posts
        assert post["path"] == "/tlsrpt"
        assert post["ctype"] == "application/tlsrpt+gzip", post["ctype"]
        rep = json.loads(gzip.decompress(post["body"]))
        check_schema(rep)
        [p] = rep["policies"]
        assert p["policy"]["policy-type"] == "sts"
        assert p["policy"]["policy-domain"] == "ok.u.test"
        assert p["summary"] == {"total-successful-session-count": 2,
                                "total-failure-session-count": 0}

        # mail (RPT-40/41/42)
        (rec,) = s_mail.wait_messages(1, timeout=15)
        assert rec["mail_from"] in ("", "<>"), rec["mail_from"]
        assert rec["rcpt_tos"] == ["reports@rptmail.u.test"]
        m = email.message_from_bytes(rec["data"], policy=email.policy.default)
        assert m["TLS-Report-Domain"] == "ok.u.test"
        assert m["TLS-Report-Submitter"] == "reporter.test"
        assert m["TLS-Required"].strip().lower() == "no"
        assert re.match(r"^Report Domain: ok\.u\.test Submitter: "
                        r"reporter\.test Report-ID: <[^>]+@[^>]+>$",
                        str(m["Subject"])), m["Subject"]
        assert m.get_content_type() == "multipart/report"
        assert m.get_param("report-type") == "tlsrpt"
        parts = list(m.iter_parts())
        assert parts[0].get_content_type() == "text/plain"
        att = parts[1]
        assert att.get_content_type() == "application/tlsrpt+gzip"
        assert re.match(r"^reporter\.test!ok\.u\.test!\d+!\d+\.json\.gz$",
                        att.get_filename()), att.get_filename()
        mrep = json.loads(gzip.decompress(att.get_content()))
        check_schema(mrep)
        assert mrep["policies"][0]["summary"] == p["summary"]
        assert mrep["contact-info"].endswith("@reporter.test")  # RPT-41

        # RPT-43: DKIM-signed by the submitter domain, TLS-Report-* signed
        data = rec["data"]
        sigs = m.get_all("DKIM-Signature") or []
        assert len(sigs) == 1, sigs
        tags = dict(t.strip().split("=", 1) for t in
                    re.sub(r"\s+", "", str(sigs[0])).split(";") if "=" in t)
        assert tags["d"] == "reporter.test" and tags["s"] == "tlsrpt", tags
        assert "l" not in tags, tags
        signed = tags["h"].lower().split(":")
        assert "tls-report-domain" in signed, signed
        assert "tls-report-submitter" in signed, signed
        assert dkim.verify(data, dnsfunc=dnsfunc), data[:800]
        bad = data.replace(b"TLS-Report-Domain: ok.u.test",
                           b"TLS-Report-Domain: xk.u.test", 1)
        assert bad != data
        assert not dkim.verify(bad, dnsfunc=dnsfunc)

        # RPT-44: the report mail's delivery is not counted
        time.sleep(0.5)
        cnt = mtad.run_tool([mtad_mtactl(), "-c", mtad.conf,
                             "tlsrpt"]).stdout.decode()
        assert "rptmail.u.test" not in cnt, cnt
        assert "ok.u.test" in cnt, cnt

        # marked reported: the next round sends nothing more
        out = mtad.run_tool([mtad_mtactl(), "-c", mtad.conf, "tlsrpt",
                             "send", "--day", _today()]).stdout.decode()
        assert "ok.u.test" not in out, out
        assert len(col.posts) == 1
    finally:
        col.stop()


def test_rpt21_no_policy_tls_session_counted(env):
    """RPT-21: a TLS delivery to a domain with no published policy (no
    TLSA: insecure zone u.test; no MTA-STS: vsan.u.test has no
    _mta-sts record) is a successful session under no-policy-found."""
    s = env.sink("mx1.vsan.u.test")
    mtad = env.start()
    qid, _ = send(mtad, "vsan.u.test")
    expect_sent(mtad, qid, s, "none")
    c = _wait_tlsrpt(mtad, ("vsan.u.test", "no-policy-found",
                            "successful-session"))
    assert c[("vsan.u.test", "no-policy-found", "successful-session")] == 1, c
    assert not [k for k in c if k[0] == "vsan.u.test"
                and k[2] != "successful-session"], c
    rep, _ = show(mtad, "vsan.u.test")
    check_schema(rep)
    [p] = rep["policies"]
    assert p["policy"]["policy-type"] == "no-policy-found"
    assert p["summary"] == {"total-successful-session-count": 1,
                            "total-failure-session-count": 0}
