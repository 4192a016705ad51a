#!/usr/bin/python3
"""Writes the seed corpus of tests/fuzz/fuzz_dns.c to tests/fuzz/corpus/dns
(run from the repository root with Debian's python3 and python3-dnspython).

Layout of an input: qtype (0 MX, 1 ADDR, 2 TLSA, 3 TXT), nrep - 1, then per
reply: dnssec (0 SECURE, 1 BOGUS, 2 INDETERMINATE, 3 INSECURE), a 2-byte
big-endian length and a DNS message in wire form."""
import os
import struct

import dns.message
import dns.rcode
import dns.rrset

Q = "fuzz.example.test."
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "dns")


def reply(qtype, answers=(), rcode=dns.rcode.NOERROR):
    q = dns.message.make_query(Q, qtype, want_dnssec=True)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for name, ttl, rtype, rdatas in answers:
        r.answer.append(dns.rrset.from_text_list(name, ttl, "IN", rtype, rdatas))
    return r.to_wire()


def add_raw_rr(wire, owner, rtype, rdata):
    """wire with one more answer record appended as raw bytes (rdata may be
    malformed, e.g. empty)."""
    ancount = struct.unpack("!H", wire[6:8])[0]
    name = b"".join(bytes([len(l)]) + l.encode() for l in owner.rstrip(".").split(".")) + b"\0"
    rr = name + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
    # answers come before authority/additional; our messages have only an
    # OPT record in additional: rebuild without it
    msg = dns.message.from_wire(wire)
    msg.use_edns(False)
    wire = bytearray(msg.to_wire())
    wire[6:8] = struct.pack("!H", ancount + 1)
    return bytes(wire) + rr


def inp(qtype, *reps):
    out = bytes([qtype, len(reps) - 1])
    for sec, w in reps:
        out += bytes([sec]) + struct.pack("!H", len(w)) + w
    return out


SHA = "a" * 64
seeds = {
    # issue 18: a valid TXT record, then one with rdlength 0 (leaked the
    # first record's text)
    "txt_valid_then_empty": inp(3, (0, add_raw_rr(
        reply("TXT", [(Q, 60, "TXT", ['"v=STSv1; id=1;"'])]), Q, 16, b""))),
    "txt_two": inp(3, (3, reply("TXT", [(Q, 60, "TXT", ['"v=STSv1; id=1;"', '"a" "b"'])]))),
    "txt_nodata": inp(3, (0, reply("TXT"))),
    "txt_nx": inp(3, (0, reply("TXT", rcode=dns.rcode.NXDOMAIN))),
    "txt_servfail": inp(3, (2, reply("TXT", rcode=dns.rcode.SERVFAIL))),
    "mx_two": inp(0, (0, reply("MX", [(Q, 60, "MX", ["10 mx1.example.test.", "10 mx2.example.test.", "20 192.0.2.1."])]))),
    "mx_null": inp(0, (0, reply("MX", [(Q, 60, "MX", ["0 ."])]))),
    "mx_null_and_other": inp(0, (3, reply("MX", [(Q, 60, "MX", ["0 .", "10 mx.example.test."])]))),
    "mx_bogus": inp(0, (1, reply("MX", [(Q, 60, "MX", ["10 mx.example.test."])]))),
    "mx_empty_rdata": inp(0, (0, add_raw_rr(reply("MX", [(Q, 60, "MX", ["10 mx.example.test."])]), Q, 15, b""))),
    "addr_a_aaaa": inp(1, (0, reply("A", [(Q, 60, "A", ["192.0.2.1"])])),
                       (0, reply("AAAA", [(Q, 60, "AAAA", ["2001:db8::1"])]))),
    "addr_cname": inp(1, (3, reply("A", [(Q, 60, "CNAME", ["t.example.test."]),
                                          ("t.example.test.", 60, "A", ["192.0.2.2"])])),
                      (3, reply("AAAA", [(Q, 60, "CNAME", ["t.example.test."])]))),
    "addr_short_a": inp(1, (0, add_raw_rr(reply("A"), Q, 1, b"\x01\x02"))),
    "tlsa_set": inp(2, (0, reply("TLSA", [(Q, 60, "TLSA", ["3 1 1 " + SHA, "2 0 1 " + SHA, "1 1 1 " + SHA])]))),
    "tlsa_empty_rdata": inp(2, (0, add_raw_rr(reply("TLSA", [(Q, 60, "TLSA", ["3 1 1 " + SHA])]), Q, 52, b""))),
}

os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print("%d seeds in %s" % (len(seeds), OUT))
