"""DKIM signing at acceptance (issue 17 part b, RFC 6376, RFC 8463; RPT-43's
signer): mtad with a dkim.keys_file signs mail from relay clients whose
From domain has a key; the copy that reaches a sink verifies with an
independent verifier (Debian's python3-dkim, its DNS stubbed with the
test's TXT records); mail from another domain is not signed; a signed
message changed afterwards fails verification; the private keys never
appear in the log.  No DNS: the relayhost is an IP literal."""
import base64
import os
import sys
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lab"))
sys.path.insert(0, os.path.join(HERE, "lib"))

from smtpraw import RawSMTP  # noqa: E402
from sinks import sink_lab  # noqa: E402,F401  (fixture)

NODNS = {"dns.resolver": "127.0.0.1:9", "dns.timeout": "1s"}


def relay_to(sink):
    return "[%s]:%d" % (sink.addr, sink.port)


def keys(tmp_path):
    """Writes an RSA key (rsa.test, selector s1) and an Ed25519 key
    (ed.test, selector s2, no algorithm field: detected) and the table;
    returns (table path, TXT records by name, PEM bytes by domain)."""
    rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ek = ed25519.Ed25519PrivateKey.generate()
    pems = {}
    for dom, k in (("rsa.test", rk), ("ed.test", ek)):
        pems[dom] = k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        (tmp_path / (dom + ".pem")).write_bytes(pems[dom])
    rsa_pub = base64.b64encode(rk.public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    ed_pub = base64.b64encode(ek.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    table = tmp_path / "dkim.keys"
    table.write_text("# domain selector keyfile [alg]\n"
                     "rsa.test s1 rsa.test.pem rsa\n"
                     "ED.test s2 %s\n" % (tmp_path / "ed.test.pem"))
    txt = {"s1._domainkey.rsa.test.": "v=DKIM1; k=rsa; p=" + rsa_pub,
           "s2._domainkey.ed.test.": "v=DKIM1; k=ed25519; p=" + ed_pub}
    return str(table), txt, pems


def dnsfunc(txt):
    def f(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        v = txt.get(name)
        return v.encode() if v is not None else None
    return f


def send(mtad, frm, subject, body=b"Hello,\r\n\r\n  spaced   line \r\n\r\n\r\n"):
    msg = (b"From: Sender <" + frm.encode() + b">\r\n"
           b"To: Bob <bob@example.org>\r\n"
           b"Subject: " + subject.encode() + b"\r\n"
           b"Date: Sun, 6 Dec 2026 12:00:00 +0000\r\n"
           b"Message-ID: <" + subject.encode() + b"@client.test>\r\n"
           b"X-Unsigned: whatever\r\n"
           b"\r\n" + body)
    c = RawSMTP(mtad.addr, mtad.port)
    assert c.greeting().code == 220
    assert c.ehlo("client.test").code == 250
    r = c.send_message(frm, ["bob@example.org"], msg)
    assert r.code == 250, r
    c.quit()
    return r.qid


def by_subject(sink, n):
    recs = sink.wait_messages(n, timeout=30)
    out = {}
    for rec in recs:
        data = rec["data"]
        for line in data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out[line[9:].decode()] = data
    return out


def test_dkim_signs_rsa_and_ed25519_verified_independently(mtad_factory, sink_lab, tmp_path):
    """RSA-SHA256 and Ed25519-SHA256 (RFC 8463), relaxed/relaxed: both
    signatures verify with python3-dkim; a From domain not in the table is
    not signed; a signed message modified after signing fails; From is
    over-signed and no l= tag is written (RPT-43); the keys stay out of
    the log."""
    table, txt, pems = keys(tmp_path)
    sink = sink_lab.aio()
    mtad = mtad_factory(dict(NODNS, **{"delivery.relayhost": relay_to(sink),
                                       "dkim.keys_file": table}))
    send(mtad, "app@rsa.test", "rsa")
    send(mtad, "app@ed.test", "ed")
    send(mtad, "app@other.test", "other")
    # a body that spilled to a temporary file (> 256 KiB) is hashed whole
    big = b"".join(b"line %06d of a long body\r\n" % i for i in range(12000))
    send(mtad, "app@ed.test", "big", big)
    got = by_subject(sink, 4)
    f = dnsfunc(txt)

    for subj, alg in (("rsa", b"a=rsa-sha256"), ("ed", b"a=ed25519-sha256"),
                      ("big", b"a=ed25519-sha256")):
        data = got[subj]
        assert data.startswith(b"DKIM-Signature: v=1;"), data[:200]
        sig = data.split(b"\r\nReceived:")[0]
        assert alg in sig and b"c=relaxed/relaxed" in sig, sig
        assert b" l=" not in sig and b";l=" not in sig, sig
        assert b"h=from:from:to:subject:date:message-id;" in sig.replace(b"\r\n\t", b""), sig
        assert dkim.verify(data, dnsfunc=f), (subj, data[:600])
        # changed after signing: the verifier must say no
        tampered = data.replace(b"Subject: " + subj.encode(), b"Subject: " + subj.encode() + b"!")
        assert tampered != data
        assert not dkim.verify(tampered, dnsfunc=f), subj
        body_changed = data[:-4] + b"X\r\n\r\n"
        assert not dkim.verify(body_changed, dnsfunc=f), subj
        # a second From added in transit breaks it (over-signing)
        hdr_end = data.index(b"\r\n\r\n")
        added = data[:hdr_end] + b"\r\nFrom: evil@attacker.test" + data[hdr_end:]
        assert not dkim.verify(added, dnsfunc=f), subj

    assert b"DKIM-Signature" not in got["other"]
    assert got["big"].endswith(big)

    signed = mtad.events("dkim_signed")
    assert sorted(e["domain"] for e in signed) == ["ed.test", "ed.test", "rsa.test"], signed
    assert {e["domain"]: e["alg"] for e in signed} == {"rsa.test": "rsa", "ed.test": "ed25519"}
    log = mtad.log_text()
    for pem in pems.values():
        inner = b"".join(pem.split(b"\n")[1:-2]).decode()
        assert inner[:40] not in log and inner[-40:] not in log


def test_dkim_bad_keys_file_refused_at_start(tmp_path):
    """dkim.keys_file that names a missing key file: --check-config exits 2
    and names the key and the table's line."""
    import subprocess
    from mtadtest import MTAD, clean_env
    table = tmp_path / "dkim.keys"
    table.write_text("example.org sel missing.pem\n")
    conf = tmp_path / "mtad.conf"
    conf.write_text("[spool]\ndir = %s\n[dkim]\nkeys_file = %s\n"
                    % (tmp_path / "spool", table))
    r = subprocess.run([MTAD, "-c", str(conf), "--check-config"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=clean_env(), timeout=20)
    assert r.returncode == 2, r
    err = r.stderr.decode()
    assert "keys_file" in err and "dkim.keys:1" in err and "missing.pem" in err, err
