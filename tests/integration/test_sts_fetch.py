"""MTA-STS policy fetch (libmta/sts_fetch.c) against a real HTTPS server.

tests/sts_fetch_probe fetches https://mta-sts.<domain>/.well-known/mta-sts.txt
through the module (curl multi-socket on a libuv loop), connecting to the
lab's address (as the daemon does with the address getdns gave it), and
prints one JSON object per result.  tests/lab/httpslab.py serves many
mta-sts.<domain> hosts on one loopback address, picks the certificate by
SNI, and logs SNI, Host and the request headers.

STS_FETCH_PROBE selects the probe (default $MTAD_BUILD_DIR/tests/
sts_fetch_probe).  Case ids: shared/reference/conformance.md section 1.3.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lab"))

import httpslab  # noqa: E402
import sinks  # noqa: E402

BUILD_DIR = os.environ.get("MTAD_BUILD_DIR", "/work/main/build")
PATH = "/.well-known/mta-sts.txt"


def _probe_path():
    p = os.environ.get("STS_FETCH_PROBE")
    if p:
        return p
    c = os.path.join(BUILD_DIR, "tests", "sts_fetch_probe")
    return c if os.access(c, os.X_OK) else None


PROBE = _probe_path()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if PROBE is None:
        pytest.skip("sts_fetch_probe not built (set STS_FETCH_PROBE or MTAD_BUILD_DIR)")
    lab = httpslab.HttpsLab(sinks.alloc_addr(),
                            workdir=str(tmp_path_factory.mktemp("https")))
    lab.add_host("m.u.test")
    for kind in httpslab.HttpsLab.CERT_KINDS:
        if kind != "ok":
            lab.add_host(kind + ".c.u.test", cert=kind)
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


_n = [0]


def fresh(lab, **script):
    """A new policy host with its own domain, so requests are counted per
    test."""
    _n[0] += 1
    d = "d%d.u.test" % _n[0]
    lab.add_host(d, **script)
    return d


def probe(lab, domain, *args, timeout_ms=3000, port=None, addr=None, ca=None):
    argv = [PROBE, "-T", str(timeout_ms)] + list(args) + [
        domain, str(port or lab.port), ca if ca is not None else lab.ca_file,
        addr or lab.addr]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, "probe failed (rc %d):\n%s\n%s" % (
        p.returncode, p.stdout, p.stderr)
    assert "ERROR: AddressSanitizer" not in p.stderr, p.stderr
    assert "runtime error" not in p.stderr, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line]


def fetch1(lab, domain, **kw):
    res = probe(lab, domain, **kw)
    assert len(res) == 1, res
    return res[0]


# ---- a valid policy: STS-01, STS-40, STS-41

def test_sts01_sts40_sts41_valid_policy(lab):
    d = fresh(lab)
    r = fetch1(lab, d)
    assert r["status"] == "OK" and r["http_code"] == 200, r
    assert r["report_type"] is None
    assert r["body"] == httpslab.policy_body(d)
    assert r["policy"] == {"valid": True, "mode": "enforce", "max_age": 604800,
                           "max_age_capped": False,
                           "mx": ["mx1." + d, "mx2." + d]}
    (req,) = lab.requests(d)
    # SNI and Host are mta-sts.<domain>, although we connected to an IP
    # on a test port (CURLOPT_CONNECT_TO); exact path; GET.
    assert req["sni"] == "mta-sts." + d
    assert req["headers"]["Host"] == "mta-sts." + d
    assert req["method"] == "GET" and req["path"] == PATH


def test_sts20_lf_policy_and_content_type_params(lab):
    # STS-46: parameters and case of the media type do not matter
    for ct in ("text/plain; charset=utf-8", "TEXT/Plain;charset=us-ascii",
               "text/plain; format=flowed"):
        d = fresh(lab, content_type=ct,
                  body=httpslab.policy_body("x.test", crlf=False))
        r = fetch1(lab, d)
        assert r["status"] == "OK", (ct, r)
        assert r["content_type"] == ct
        assert r["policy"]["valid"] is True   # STS-20: LF endings


# ---- non-200 and redirects: STS-42, STS-43

@pytest.mark.parametrize("status", [204, 203, 206, 404, 500, 503])
def test_sts42_non_200_is_failure(lab, status):
    d = fresh(lab, status=status)
    r = fetch1(lab, d)
    assert r["status"] == "HTTP_STATUS", r
    assert r["http_code"] == status
    assert r["body"] is None
    assert r["report_type"] == "sts-policy-fetch-error"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("where", ["same", "other"])
def test_sts43_redirect_not_followed(lab, status, where):
    target = fresh(lab)          # serves a valid policy
    d = fresh(lab, status=status)
    loc_host = "mta-sts." + (d if where == "same" else target)
    lab.set(d, headers={"Location": "https://%s%s" % (loc_host, PATH)})
    r = fetch1(lab, d)
    assert r["status"] == "HTTP_STATUS" and r["http_code"] == status, r
    assert len(lab.requests(d)) == 1          # not re-requested
    assert lab.requests(target) == []         # Location never fetched


# ---- no HTTP caching: STS-44

def test_sts44_no_conditional_requests(lab):
    d = fresh(lab, headers={"Cache-Control": "max-age=86400",
                            "ETag": '"v1"',
                            "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                            "Expires": "Thu, 01 Jan 2099 00:00:00 GMT"})
    r1 = fetch1(lab, d)
    assert r1["policy"]["mode"] == "enforce"
    lab.set(d, body=httpslab.policy_body(d, mode="testing"))
    r2 = fetch1(lab, d)
    assert r2["status"] == "OK"
    assert r2["policy"]["mode"] == "testing"   # the new body is applied
    reqs = lab.requests(d)
    assert len(reqs) == 2
    for req in reqs:
        assert req["if_none_match"] is None
        assert req["if_modified_since"] is None
        names = {k.lower() for k in req["headers"]}
        assert not names & {"if-none-match", "if-modified-since",
                            "if-match", "if-unmodified-since", "if-range",
                            "cookie", "authorization"}, req["headers"]


# ---- media type: STS-45, STS-47

@pytest.mark.parametrize("ct", ["text/html", "application/octet-stream",
                                "text/plainx", None])
def test_sts45_sts47_wrong_or_missing_content_type(lab, ct):
    d = fresh(lab, content_type=ct)
    r = fetch1(lab, d)
    assert r["status"] == "CONTENT_TYPE", r
    assert r["http_code"] == 200
    assert r["body"] is None
    assert r["report_type"] == "sts-policy-invalid"   # STS-45 choice


# ---- size: STS-48

@pytest.mark.parametrize("content_length", [True, False])
def test_sts48_body_limit(lab, content_length):
    d = fresh(lab, pad_to=65536, content_length=content_length)
    r = fetch1(lab, d)
    assert r["status"] == "OK" and r["body_len"] == 65536, r
    assert r["policy"]["valid"] is True
    d = fresh(lab, pad_to=65537, content_length=content_length)
    r = fetch1(lab, d)
    assert r["status"] == "TOO_BIG", r
    assert r["body"] is None
    assert r["report_type"] == "sts-policy-fetch-error"


def test_truncated_close_delimited_body_is_failure(lab):
    # no Content-Length and no TLS close_notify: the body may be cut short
    # by an attacker (TLS truncation), so it is not a policy
    d = fresh(lab, content_length=False, close_notify=False)
    r = fetch1(lab, d)
    assert r["status"] == "ERROR", r
    assert r["body"] is None
    d = fresh(lab, content_length=False)     # with close_notify: fine
    assert fetch1(lab, d)["status"] == "OK"


def test_sts48_smaller_configured_limit(lab):
    d = fresh(lab, pad_to=2000)
    assert fetch1(lab, d, timeout_ms=3000)["status"] == "OK"
    r = probe(lab, d, "-m", "1999")[0]
    assert r["status"] == "TOO_BIG", r


# ---- time: STS-49

@pytest.mark.parametrize("how", ["hang", "delay", "trickle"])
def test_sts49_timeout(lab, how):
    script = {"hang": {"hang": True}, "delay": {"delay": 30},
              "trickle": {"trickle": 0.3}}[how]
    d = fresh(lab, **script)
    t0 = time.monotonic()
    r = fetch1(lab, d, timeout_ms=1500)
    elapsed = time.monotonic() - t0
    assert r["status"] == "TIMEOUT", r
    assert r["report_type"] == "sts-policy-fetch-error"
    assert 1.4 < elapsed < 5, elapsed


def test_sts49_slow_host_does_not_block_others(lab):
    # two probes at once: the slow one times out, the fast one is fast
    slow = fresh(lab, hang=True)
    fast = fresh(lab)
    argv = [PROBE, "-T", "2000", slow, str(lab.port), lab.ca_file, lab.addr]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    t0 = time.monotonic()
    r = fetch1(lab, fast)
    assert r["status"] == "OK" and time.monotonic() - t0 < 1.5
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert json.loads(out)["status"] == "TIMEOUT"


# ---- the policy host certificate: STS-50, STS-51

@pytest.mark.parametrize("kind", ["expired", "notyet", "self", "untrusted",
                                  "noint", "wrong", "cn", "pwild"])
def test_sts50_sts51_bad_certificate_is_tls_failure(lab, kind):
    d = kind + ".c.u.test"
    r = fetch1(lab, d)
    assert r["status"] == "TLS", r
    assert r["body"] is None
    assert r["report_type"] == "sts-webpki-invalid"
    if kind != "cn":
        # refused in the handshake: no request reached the server
        assert lab.requests(d) == []


def test_sts51_wildcard_certificate_ok(lab):
    r = fetch1(lab, "wild.c.u.test")
    assert r["status"] == "OK", r


def test_sts50_system_store_does_not_trust_lab_ca(lab):
    # ca_file NULL (empty argument): curl's default store, not the lab CA
    d = fresh(lab)
    r = fetch1(lab, d, ca="")
    assert r["status"] == "TLS", r


# ---- connection failures: STS-53 (HTTPS only, no other port tried)

def test_sts53_connect_refused(lab):
    port = sinks.free_port(lab.addr)
    d = fresh(lab)
    r = fetch1(lab, d, port=port)
    assert r["status"] == "CONNECT", r
    assert r["http_code"] == 0
    assert r["report_type"] == "sts-policy-fetch-error"
    assert lab.requests(d) == []


def test_sts53_plain_http_server_is_not_a_policy(lab):
    # a plain-HTTP listener on the policy port: TLS fails, no HTTP is sent
    srv = socket.socket()
    srv.bind((lab.addr, 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    srv.settimeout(5)
    p = subprocess.Popen([PROBE, "-T", "3000", "plain.u.test", str(port),
                          lab.ca_file, lab.addr], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    conn, _ = srv.accept()
    first = conn.recv(5)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                 b"Content-Length: 0\r\n\r\n")
    conn.close()
    srv.close()
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert first[:1] == b"\x16"   # a TLS handshake record, not "GET /"
    assert json.loads(out)["status"] in ("TLS", "ERROR")


# ---- API contract

def test_many_fetches_at_once(lab):
    d = fresh(lab)
    res = probe(lab, d, "-n", "25")
    assert len(res) == 25
    assert all(r["status"] == "OK" for r in res)
    assert len(lab.requests(d)) == 25
    # each on its own connection, each with SNI
    assert all(q["sni"] == "mta-sts." + d for q in lab.requests(d))


def test_cancel_no_callback(lab):
    d = fresh(lab, delay=1)
    res = probe(lab, d, "-C", "-n", "5")
    assert res == []           # the probe checks: no callback, loop closed


@pytest.mark.parametrize("domain,addr", [
    ("bad domain.test", None), ("x..test", None), ("a" * 250 + ".test", None),
    ("ok.test", "mta-sts.ok.test"), ("ok.test", "127.0.0.300")])
def test_refused_arguments(lab, domain, addr):
    res = probe(lab, domain, addr=addr)
    assert res == [{"error": "EINVAL"}]


def test_ipv6_connect_address(lab):
    s = socket.socket(socket.AF_INET6)
    try:
        s.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1")
    finally:
        s.close()
    # nothing listens on ::1 at that port: CONNECT proves the v6 mapping
    port = sinks.free_port(lab.addr)
    r = fetch1(lab, fresh(lab), addr="::1", port=port)
    assert r["status"] == "CONNECT", r
