"""Certificate Transparency test material (RFC 6962), built by the tests.

Test CT logs (ECDSA P-256 keys generated here), a browser-style log list
(log_list.json v3) naming them, and leaf certificates carrying a real
embedded SCT list (X.509 extension 1.3.6.1.4.1.11129.2.4.2) whose SCTs are
signed by those logs over the RFC 6962 section 3.2 precert entry:
SHA-256 of the issuer's SubjectPublicKeyInfo and the leaf's TBSCertificate
without the SCT extension.

The leaf is built twice with the same builder (same serial, validity,
key, extensions): once without the SCT extension (its TBS is what the
logs sign), once with it added last, so removing it yields that TBS again.

Per-SCT knobs (the refusal cases of issue 16): tamper (flip a signature
byte), tbs_of (sign the TBS of another certificate), ts_ms (timestamp,
e.g. in the future), version.
"""
import base64
import datetime
import hashlib
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import sinks  # noqa: E402

SCT_OID = "1.3.6.1.4.1.11129.2.4.2"


def _now_ms():
    return int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1000)


def _rfc3339(ms):
    return datetime.datetime.fromtimestamp(
        ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CtLog:
    """One test log: its key, id, operator and state."""

    def __init__(self, description, operator, state="usable",
                 state_ms=None, temporal=None):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        self.description = description
        self.operator = operator
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.log_id = hashlib.sha256(self.spki).digest()
        self.state = state
        # by default the state began a day ago
        self.state_ms = state_ms if state_ms is not None else _now_ms() - 86400000
        self.temporal = temporal  # (start_ms, end_ms) or None

    def entry(self):
        e = {
            "description": self.description,
            "log_id": base64.b64encode(self.log_id).decode(),
            "key": base64.b64encode(self.spki).decode(),
            "url": "https://ct.invalid/%s/" % self.description,
            "mmd": 86400,
            "state": {self.state: {"timestamp": _rfc3339(self.state_ms)}},
        }
        if self.temporal:
            e["temporal_interval"] = {
                "start_inclusive": _rfc3339(self.temporal[0]),
                "end_exclusive": _rfc3339(self.temporal[1])}
        return e

    def sign(self, data):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def log_list(logs, list_ms=None):
    """The log list (a dict) naming logs, grouped by operator."""
    ops = {}
    for lg in logs:
        ops.setdefault(lg.operator, []).append(lg.entry())
    return {
        "version": "36.0",
        "log_list_timestamp": _rfc3339(list_ms if list_ms is not None else _now_ms()),
        "operators": [{"name": name, "email": ["ct@%s.invalid" % name.lower()],
                       "logs": entries} for name, entries in ops.items()],
    }


def write_log_list(path, logs, list_ms=None):
    with open(path, "w") as f:
        json.dump(log_list(logs, list_ms), f, indent=1)
    return path


def _u16(n):
    return struct.pack(">H", n)


def sct_bytes(log, issuer_key_hash, tbs, ts_ms=None, tamper=False,
              version=0, ext=b""):
    """One serialized SCT (RFC 6962 3.2) by log over the precert entry."""
    ts = ts_ms if ts_ms is not None else _now_ms() - 60000
    signed = (bytes([version, 0]) + struct.pack(">Q", ts) + _u16(1)
              + issuer_key_hash + struct.pack(">I", len(tbs))[1:] + tbs
              + _u16(len(ext)) + ext)
    sig = bytearray(log.sign(signed))
    if tamper:
        sig[len(sig) // 2] ^= 0x01
    return (bytes([version]) + log.log_id + struct.pack(">Q", ts)
            + _u16(len(ext)) + ext + bytes([4, 3]) + _u16(len(sig)) + bytes(sig))


def sct_list(scts):
    body = b"".join(_u16(len(s)) + s for s in scts)
    return _u16(len(body)) + body


def _der_octet_string(b):
    n = len(b)
    if n < 0x80:
        hdr = bytes([0x04, n])
    elif n < 0x100:
        hdr = bytes([0x04, 0x81, n])
    else:
        hdr = bytes([0x04, 0x82]) + struct.pack(">H", n)
    return hdr + b


def _builder(ca, names, key, serial, nb, na):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(nb).not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.key.public_key()), False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]), False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH]), False))


def issuer_key_hash(ca):
    from cryptography.hazmat.primitives import serialization
    return hashlib.sha256(ca.cert.public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def issue(ca, names, scts=(), key=None):
    """A leaf for names issued by ca (a sinks.CertKey) with an embedded SCT
    list: scts is a list of dicts {log, ts_ms, tamper, tbs_of, version}
    (tbs_of: a CertKey whose TBS is signed instead).  scts=None: no SCT
    extension at all.  Returns (sinks.CertKey, precert_tbs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ObjectIdentifier
    if isinstance(names, str):
        names = [names]
    key = key or sinks._new_key("ec")
    serial = x509.random_serial_number()
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    nb, na = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    pre = _builder(ca, names, key, serial, nb, na).sign(ca.key, hashes.SHA256())
    tbs = pre.tbs_certificate_bytes
    if scts is None:
        return sinks.CertKey(pre, key, ca), tbs
    ikh = issuer_key_hash(ca)
    out = []
    for s in scts:
        t = tbs
        if s.get("tbs_of") is not None:
            t = s["tbs_of"].cert.tbs_certificate_bytes
        out.append(sct_bytes(s["log"], ikh, t, ts_ms=s.get("ts_ms"),
                             tamper=s.get("tamper", False),
                             version=s.get("version", 0)))
    ext = x509.UnrecognizedExtension(ObjectIdentifier(SCT_OID),
                                     _der_octet_string(sct_list(out)))
    cert = (_builder(ca, names, key, serial, nb, na)
            .add_extension(ext, False).sign(ca.key, hashes.SHA256()))
    return sinks.CertKey(cert, key, ca), tbs
