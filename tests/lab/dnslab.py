#!/usr/bin/python3
"""dnslab: the DNS test lab of mtad (conformance.md section 0 tags).

A signed fake root and test. hierarchy served by Debian's knotd, a
non-validating unbound in front of it as the recursive resolver mtad talks to
(getdns in stub mode needs an upstream that follows delegations: f.s.test. is
delegated to a small Python responder), and that responder, which answers
SERVFAIL, drops queries or answers, per name and qtype.

    lab = DnsLab("127.0.53.1", 5353)       # unbound on :5353, knotd :5354,
    lab.start()                            # responder :5355
    lab.resolver        -> "127.0.53.1:5353"  (dns.resolver for mtad)
    lab.trust_anchor    -> path of the root DS (dns.trust_anchor for mtad)
    lab.add_zone_records("s.test.", ["x 60 IN TXT \\"hello\\""])
    lab.responder_rule("tlsa.f.s.test.", "TLSA", "servfail")
    lab.stop()

Zones (keys generated at start, one ECDSA P-256 CSK per signed zone):
    .          signed, the trust anchor (DS of its key)
    test.      signed
    s.test.    signed   [S], names absent from it are [X]
    u.test.    unsigned, delegated from test. without DS   [I] [IX]
    b.s.test.  DS in s.test., signatures expired in 2020   [B]
    f.s.test.  delegated (no DS) to the Python responder    [E]
Single records of a signed zone can be made bogus with tamper().

Run as a script for manual use:
    /usr/bin/python3 tests/lab/dnslab.py --addr 127.0.53.1 --port 5353
It prints the resolver and trust anchor and runs until interrupted.

Only processes started here are signalled, by the PID this module recorded
(PID files in the lab directory).  Debian packages: knot, ldnsutils, unbound,
python3-dnspython (knot-dnsutils for kdig, optional).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time

KNOTD = "/usr/sbin/knotd"
KNOTC = "/usr/sbin/knotc"
UNBOUND = "/usr/sbin/unbound"
UNBOUND_CONTROL = "/usr/sbin/unbound-control"
KEYGEN = "/usr/bin/ldns-keygen"
SIGNZONE = "/usr/bin/ldns-signzone"
KEY2DS = "/usr/bin/ldns-key2ds"

TTL = 60

# Addresses the lab's hosts point at (nothing listens there unless a test
# starts a peer).  Kept in one place so tests can refer to them.
HOSTS = {
    "mx1.d.s.test.": ("127.0.54.1", "::1"),
    "mx2.d.s.test.": ("127.0.54.2", None),
    "mx3.d.s.test.": ("127.0.54.3", None),
    "mxb.d.s.test.": ("127.0.54.11", None),
    "n.s.test.": ("127.0.54.30", None),
    "mx.u.test.": ("127.0.54.20", None),
    "mxb.x.u.test.": ("127.0.54.21", None),
    "mx.b.s.test.": ("127.0.54.50", None),
    "mx.f.s.test.": ("127.0.54.40", None),
}

TLSA_311 = "8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1"
TLSA_201 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _big_tlsa():
    # 40 x 3 1 2 (64-byte digests): ~3.5 kB with its RRSIG, truncated over
    # UDP at unbound's 1232-byte limit, so getdns must retry over TCP.
    out = []
    for i in range(40):
        out.append("_25._tcp.big 60 IN TLSA 3 1 2 %s" % ("%02x" % i * 64))
    return out


def _big_txt():
    out = []
    for i in range(16):
        out.append('bigtxt 60 IN TXT "%s" "%s"' % (chr(97 + i) * 200,
                                                  chr(65 + i) * 50))
    return out


def _base_zones(addr):
    a = addr
    zones = {}
    zones["."] = [
        ". 86400 IN SOA ns.root-lab. host.root-lab. 1 3600 600 86400 60",
        ". 86400 IN NS ns.root-lab.",
        "ns.root-lab. 86400 IN A %s" % a,
        "test. 86400 IN NS ns.test.",
        "ns.test. 86400 IN A %s" % a,
        # DS test. added when signing
    ]
    zones["test."] = [
        "test. 3600 IN SOA ns.test. host.test. 1 3600 600 86400 60",
        "test. 3600 IN NS ns.test.",
        "ns.test. 3600 IN A %s" % a,
        "s.test. 3600 IN NS ns.s.test.",
        "ns.s.test. 3600 IN A %s" % a,
        "u.test. 3600 IN NS ns.u.test.",
        "ns.u.test. 3600 IN A %s" % a,
        # DS s.test. added when signing; u.test. has none: insecure
    ]
    s = [
        "s.test. 60 IN SOA ns.s.test. host.s.test. 1 3600 600 86400 60",
        "s.test. 60 IN NS ns.s.test.",
        "ns.s.test. 60 IN A %s" % a,
        # b.s.test.: signed child, DS added when signing, expired RRSIGs
        "b.s.test. 60 IN NS ns.b.s.test.",
        "ns.b.s.test. 60 IN A %s" % a,
        # f.s.test.: the Python responder, no DS (insecure delegation)
        "f.s.test. 60 IN NS ns.f.s.test.",
        "ns.f.s.test. 60 IN A %s" % a,
        # DANE base fixture D (conformance 2): MX 10 mx1, MX 20 mx2
        "d.s.test. 60 IN MX 20 mx2.d.s.test.",
        "d.s.test. 60 IN MX 10 mx1.d.s.test.",
        "d.s.test. 60 IN A 127.0.54.99",
        # equal preferences (DANE-21 / CLI-01)
        "eq.s.test. 60 IN MX 10 mx1.d.s.test.",
        "eq.s.test. 60 IN MX 10 mx2.d.s.test.",
        "eq.s.test. 60 IN MX 10 mx3.d.s.test.",
        "eq.s.test. 60 IN MX 5 mxb.d.s.test.",
        # null MX (RFC 7505, DANE-27)
        "null.s.test. 60 IN MX 0 .",
        # no MX, only an address: implicit MX (DANE-30)
        "n.s.test. 60 IN A 127.0.54.30",
        "_25._tcp.n.s.test. 60 IN TLSA 3 1 1 %s" % TLSA_311,
        # MX host reached through a CNAME (DANE-34)
        "cn.s.test. 60 IN MX 10 mx15.d.s.test.",
        "mx15.d.s.test. 60 IN CNAME mxb.d.s.test.",
        # secure CNAME to an insecure target (DANE-36)
        "mx20.d.s.test. 60 IN CNAME mxb.x.u.test.",
        "_25._tcp.mx20.d.s.test. 60 IN TLSA 3 1 1 %s" % TLSA_311,
        # CNAME into the bogus zone (DANE-12)
        "mx30.d.s.test. 60 IN CNAME mx.b.s.test.",
        # TLSA records
        "_25._tcp.mx1.d.s.test. 60 IN TLSA 3 1 1 %s" % TLSA_311,
        "_25._tcp.mx1.d.s.test. 60 IN TLSA 2 0 1 %s" % TLSA_201,
        "_25._tcp.mxb.d.s.test. 60 IN TLSA 3 1 1 %s" % TLSA_311,
        # TXT
        'txt.s.test. 60 IN TXT "v=STSv1; id=20260101"',
        'multi.s.test. 60 IN TXT "v=TLSRPTv1;" " rua=mailto:r@s.test"',
        # MX into the insecure zone
        "ui.s.test. 60 IN MX 10 mx.u.test.",
        # MX into the failing zone
        "fs.s.test. 60 IN MX 10 mx.f.s.test.",
    ]
    for h, (v4, v6) in HOSTS.items():
        if h.endswith(".d.s.test.") or h == "n.s.test.":
            if h != "n.s.test.":
                s.append("%s 60 IN A %s" % (h, v4))
            if v6:
                s.append("%s 60 IN AAAA %s" % (h, v6))
    s += [l.replace("_25._tcp.big", "_25._tcp.big.s.test.")
          .replace("bigtxt", "bigtxt.s.test.") for l in _big_tlsa()]
    s += [l.replace("bigtxt", "bigtxt.s.test.") for l in _big_txt()]
    s.append("big.s.test. 60 IN A 127.0.54.70")
    zones["s.test."] = s
    zones["b.s.test."] = [
        "b.s.test. 60 IN SOA ns.b.s.test. host.b.s.test. 1 3600 600 86400 60",
        "b.s.test. 60 IN NS ns.b.s.test.",
        "ns.b.s.test. 60 IN A %s" % a,
        "b.s.test. 60 IN MX 10 mx.b.s.test.",
        "mx.b.s.test. 60 IN A 127.0.54.50",
        "_25._tcp.mx.b.s.test. 60 IN TLSA 3 1 1 %s" % TLSA_311,
        'txt.b.s.test. 60 IN TXT "bogus"',
    ]
    zones["u.test."] = [
        "u.test. 60 IN SOA ns.u.test. host.u.test. 1 3600 600 86400 60",
        "u.test. 60 IN NS ns.u.test.",
        "ns.u.test. 60 IN A %s" % a,
        "u.test. 60 IN MX 10 mx.u.test.",
        "mx.u.test. 60 IN A 127.0.54.20",
        "_25._tcp.mx.u.test. 60 IN TLSA 3 1 1 %s" % TLSA_311,
        "mxb.x.u.test. 60 IN A 127.0.54.21",
        'txt.u.test. 60 IN TXT "insecure"',
    ]
    return zones


SIGNED = [".", "test.", "s.test.", "b.s.test."]
# parent of each zone that gets a DS
DS_PARENT = {"test.": ".", "s.test.": "test.", "b.s.test.": "s.test."}
# zones whose signatures are made in the past (expired): bogus
EXPIRED = {"b.s.test."}


def _abs(name, origin):
    name = name.lower()
    if name == "@":
        return origin
    if name.endswith("."):
        return name
    return name + "." + (origin if origin != "." else "")


def _split(line, origin):
    """(owner, type, rest) of one record line: owner required."""
    tok = line.split()
    owner = _abs(tok[0], origin)
    i = 1
    if i < len(tok) and tok[i].isdigit():
        i += 1
    if i < len(tok) and tok[i].upper() == "IN":
        i += 1
    return owner, tok[i].upper(), i


def _fname(zone):
    return "root" if zone == "." else zone.rstrip(".")


class DnsLab:
    def __init__(self, addr="127.0.53.1", port=5353, workdir=None,
                 keep=False):
        self.addr = addr
        self.port = port
        self.knot_port = port + 1
        self.resp_port = port + 2
        self.dir = workdir or tempfile.mkdtemp(prefix="dnslab-", dir="/tmp")
        os.makedirs(self.dir, exist_ok=True)
        # mtad drops root after start-up and reads root.ds (its
        # dns.trust_anchor) through here: searchable, not listable
        os.chmod(self.dir, 0o711)
        self.keep = keep
        self.zones = _base_zones(addr)
        self.keys = {}
        self.ds = {}
        self.tampered = {}      # zone -> {(owner, type): rdata}
        self.serial = int(time.time()) % 1000000000
        self.procs = {}
        self.rules = []
        self.trust_anchor = os.path.join(self.dir, "root.ds")
        self.rules_file = os.path.join(self.dir, "responder.json")

    @property
    def resolver(self):
        return "%s:%d" % (self.addr, self.port)

    # -- zones --------------------------------------------------------
    def _keygen(self, zone):
        kd = os.path.join(self.dir, "keys")
        os.makedirs(kd, exist_ok=True)
        out = subprocess.run([KEYGEN, "-a", "ECDSAP256SHA256", "-k", zone],
                             cwd=kd, check=True, capture_output=True,
                             text=True).stdout.strip()
        base = os.path.join(kd, out)
        ds = subprocess.run([KEY2DS, "-n", "-2", base + ".key"],
                            check=True, capture_output=True,
                            text=True).stdout.strip()
        self.keys[zone] = base
        self.ds[zone] = ds

    def _render(self, zone):
        lines = ["$ORIGIN %s" % zone, "$TTL %d" % TTL]
        soa_done = False
        for l in self.zones[zone]:
            owner, typ, _ = _split(l, zone)
            if typ == "SOA" and not soa_done:
                tok = l.split()
                # bump the serial so knotd reloads
                tok[-5] = str(self.serial)
                l = " ".join(tok)
                soa_done = True
            lines.append(l)
        for child, parent in DS_PARENT.items():
            if parent == zone:
                lines.append(self.ds[child])
        return "\n".join(lines) + "\n"

    def _sign(self, zone):
        zd = os.path.join(self.dir, "zones")
        os.makedirs(zd, exist_ok=True)
        src = os.path.join(zd, _fname(zone) + ".src")
        dst = os.path.join(zd, _fname(zone) + ".zone")
        with open(src, "w") as f:
            f.write(self._render(zone))
        if zone not in SIGNED:
            shutil.copyfile(src, dst + ".tmp")
        else:
            args = [SIGNZONE, "-o", zone, "-f", dst + ".tmp"]
            if zone in EXPIRED:
                args += ["-i", "20200101000000", "-e", "20200201000000"]
            else:
                now = int(time.time())
                args += ["-i", str(now - 3600), "-e", str(now + 30 * 86400)]
            subprocess.run(args + [src, self.keys[zone]], check=True,
                           capture_output=True, cwd=zd)
            tam = self.tampered.get(zone)
            if tam:
                self._apply_tamper(dst + ".tmp", tam)
        os.replace(dst + ".tmp", dst)

    @staticmethod
    def _apply_tamper(path, tam):
        out = []
        with open(path) as f:
            for line in f:
                tok = line.split(None, 4)
                if len(tok) == 5 and (tok[0].lower(), tok[3].upper()) in tam:
                    line = "%s\t%s\tIN\t%s\t%s\n" % (
                        tok[0], tok[1], tok[3],
                        tam[(tok[0].lower(), tok[3].upper())])
                out.append(line)
        with open(path, "w") as f:
            f.writelines(out)

    def _sign_all(self):
        # children first: their DS goes into the parent
        for z in ["b.s.test.", "s.test.", "u.test.", "test.", "."]:
            self._sign(z)
        with open(self.trust_anchor, "w") as f:
            f.write(self.ds["."] + "\n")

    def add_zone_records(self, zone, lines, replace=False, reload=True):
        """Add record lines (owner required, relative to the zone or
        absolute) to zone; with replace=True first remove the records with
        the same owner and type.  Re-signs and reloads."""
        zone = zone if zone.endswith(".") else zone + "."
        if replace:
            keys = {_split(l, zone)[:2] for l in lines}
            self.zones[zone] = [l for l in self.zones[zone]
                                if _split(l, zone)[:2] not in keys]
        for l in lines:
            owner, typ, i = _split(l, zone)
            tok = l.split()
            ttl = tok[1] if tok[1].isdigit() else str(TTL)
            self.zones[zone].append("%s %s IN %s %s" % (
                owner, ttl, typ, " ".join(tok[i + 1:])))
        if reload:
            self.reload(zone)

    def remove_records(self, zone, owner, rtype=None, reload=True):
        zone = zone if zone.endswith(".") else zone + "."
        owner = _abs(owner, zone)
        self.zones[zone] = [l for l in self.zones[zone]
                            if not (_split(l, zone)[0] == owner and
                                    (rtype is None or
                                     _split(l, zone)[1] == rtype.upper()))]
        if reload:
            self.reload(zone)

    def tamper(self, zone, owner, rtype, rdata, reload=True):
        """After signing, replace the rdata of owner/rtype in the signed
        zone: its RRSIG no longer matches, the RRset is bogus."""
        zone = zone if zone.endswith(".") else zone + "."
        self.tampered.setdefault(zone, {})[(_abs(owner, zone),
                                            rtype.upper())] = rdata
        if reload:
            self.reload(zone)

    def reload(self, zone=None):
        self.serial += 1
        zones = [zone] if zone else list(self.zones)
        for z in zones:
            self._sign(z)
        if "knotd" in self.procs:
            for z in zones:
                subprocess.run([KNOTC, "-c", self._knot_conf, "-b",
                                "zone-reload", z], check=True,
                               capture_output=True, timeout=20)
            self._wait_serial(zones)
            self.flush()

    def _wait_serial(self, zones):
        import dns.message
        import dns.query
        import dns.rdatatype
        for z in zones:
            for _ in range(100):
                q = dns.message.make_query(z, dns.rdatatype.SOA)
                try:
                    r = dns.query.udp(q, self.addr, timeout=1,
                                      port=self.knot_port)
                    if r.answer and r.answer[0][0].serial == self.serial:
                        break
                except Exception:
                    pass
                time.sleep(0.05)
            else:
                raise RuntimeError("knotd did not load %s" % z)

    def flush(self):
        """Empty unbound's caches (after a zone or responder change)."""
        if "unbound" not in self.procs:
            return
        for cmd in (["flush_zone", "."], ["flush_infra", "all"],
                    ["flush_requestlist"], ["flush_bogus"],
                    ["flush_negative"]):
            subprocess.run([UNBOUND_CONTROL, "-c", self._unbound_conf] + cmd,
                           check=True, capture_output=True, timeout=10)

    # -- responder rules ---------------------------------------------------
    def responder_rule(self, name, qtype="*", action="servfail", rdata=None):
        """action: servfail | drop | refused | nxdomain | answer (rdata: list
        of presentation rdata strings of qtype).  name may start with
        "*." to match every name below it."""
        self.rules.append({"name": name.lower().rstrip(".") + ".",
                           "qtype": qtype.upper(), "action": action,
                           "rdata": rdata or []})
        self._write_rules()

    def clear_responder_rules(self):
        self.rules = []
        self._write_rules()

    def _write_rules(self):
        tmp = self.rules_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.rules, f)
        os.replace(tmp, self.rules_file)
        self.flush()

    # -- processes -----------------------------------------------------------
    def _write_knot_conf(self):
        zd = os.path.join(self.dir, "zones")
        os.makedirs(os.path.join(self.dir, "knotdb"), exist_ok=True)
        c = ["server:",
             "  listen: %s@%d" % (self.addr, self.knot_port),
             "  rundir: %s" % self.dir,
             "  pidfile: %s" % os.path.join(self.dir, "knotd.pid"),
             "control:",
             "  listen: %s" % os.path.join(self.dir, "knot.sock"),
             "database:",
             "  storage: %s" % os.path.join(self.dir, "knotdb"),
             "log:",
             "  - target: stderr",
             "    any: info",
             "template:",
             "  - id: default",
             "    storage: %s" % zd,
             "    zonefile-sync: -1",
             "    zonefile-load: whole",
             "    journal-content: none",
             "    semantic-checks: off",
             "zone:"]
        for z in self.zones:
            c += ["  - domain: \"%s\"" % z,
                  "    file: %s.zone" % _fname(z)]
        self._knot_conf = os.path.join(self.dir, "knot.conf")
        with open(self._knot_conf, "w") as f:
            f.write("\n".join(c) + "\n")

    def _write_unbound_conf(self):
        c = ["server:",
             "  interface: %s@%d" % (self.addr, self.port),
             "  port: %d" % self.port,
             "  do-daemonize: no",
             "  username: \"\"",
             "  chroot: \"\"",
             "  directory: \"%s\"" % self.dir,
             "  pidfile: \"%s\"" % os.path.join(self.dir, "unbound.pid"),
             "  use-syslog: no",
             "  logfile: \"\"",
             "  verbosity: 1",
             "  log-queries: yes",
             "  log-replies: no",
             "  do-ip6: no",
             "  access-control: 127.0.0.0/8 allow",
             "  do-not-query-localhost: no",
             "  module-config: \"iterator\"",
             "  local-zone: \"test.\" nodefault",
             "  qname-minimisation: no",
             "  target-fetch-policy: \"0 0 0 0 0\"",
             "  infra-host-ttl: 1",
             "  cache-max-negative-ttl: 1",
             "  num-threads: 1",
             "remote-control:",
             "  control-enable: yes",
             "  control-interface: \"%s\"" % os.path.join(self.dir,
                                                           "unbound.ctl"),
             # every lab zone needs its own stub-zone: delegations carry no
             # port, so unbound would follow them to port 53
             ]
        for z in self.zones:
            c += ["stub-zone:",
                  "  name: \"%s\"" % z,
                  "  stub-addr: %s@%d" % (self.addr, self.knot_port)]
        c += ["stub-zone:",
             "  name: \"f.s.test.\"",
             "  stub-addr: %s@%d" % (self.addr, self.resp_port)]
        self._unbound_conf = os.path.join(self.dir, "unbound.conf")
        with open(self._unbound_conf, "w") as f:
            f.write("\n".join(c) + "\n")

    def _spawn(self, name, argv):
        log = open(os.path.join(self.dir, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = p
        with open(os.path.join(self.dir, name + ".lab.pid"), "w") as f:
            f.write("%d\n" % p.pid)
        return p

    def _wait_dns(self, port, name, tcp=False):
        import dns.message
        import dns.query
        deadline = time.time() + 10
        while time.time() < deadline:
            p = self.procs[name]
            if p.poll() is not None:
                raise RuntimeError("%s exited (%s); log %s" % (
                    name, p.returncode,
                    os.path.join(self.dir, name + ".log")))
            q = dns.message.make_query("s.test.", "SOA")
            try:
                dns.query.udp(q, self.addr, port=port, timeout=0.5)
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("%s not answering on %s:%d" % (name, self.addr,
                                                           port))

    def start(self):
        for z in SIGNED:
            self._keygen(z)
        self._sign_all()
        self._write_rules()
        self._write_knot_conf()
        self._write_unbound_conf()
        self._spawn("knotd", [KNOTD, "-c", self._knot_conf])
        self._wait_dns(self.knot_port, "knotd")
        self._spawn("responder", [sys.executable, os.path.abspath(__file__),
                                  "responder", "--addr", self.addr,
                                  "--port", str(self.resp_port),
                                  "--rules", self.rules_file])
        self._wait_dns(self.resp_port, "responder")
        self._spawn("unbound", [UNBOUND, "-d", "-c", self._unbound_conf])
        self._wait_dns(self.port, "unbound")
        return self

    def stop(self):
        for name in ("unbound", "responder", "knotd"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def query_log(self):
        """unbound's log of client queries: list of (name, type)."""
        out = []
        try:
            with open(os.path.join(self.dir, "unbound.log"),
                      errors="replace") as f:
                for line in f:
                    m = re.search(r"info: \S+ (\S+) (\S+) IN", line)
                    if m:
                        out.append((m.group(1).lower(), m.group(2)))
        except OSError:
            pass
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------
# The responder for f.s.test. (runs as its own process)

def _responder_main(addr, port, rules_file):
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    origin = "f.s.test."
    static = {
        ("f.s.test.", "SOA"): ["ns.f.s.test. host.f.s.test. 1 60 60 600 60"],
        ("f.s.test.", "NS"): ["ns.f.s.test."],
        ("ns.f.s.test.", "A"): [addr],
        ("mx.f.s.test.", "A"): ["127.0.54.40"],
        ("f.s.test.", "MX"): ["10 mx.f.s.test."],
        ("ok.f.s.test.", "A"): ["127.0.54.41"],
    }
    state = {"mtime": None, "rules": []}

    def rules():
        try:
            m = os.stat(rules_file).st_mtime_ns
        except OSError:
            return []
        if m != state["mtime"]:
            try:
                with open(rules_file) as f:
                    state["rules"] = json.load(f)
                state["mtime"] = m
            except (OSError, ValueError):
                pass
        return state["rules"]

    def match(name, qtype):
        for r in rules():
            n = r["name"]
            if n.startswith("*."):
                ok = name.endswith(n[1:])
            else:
                ok = name == n
            if ok and r["qtype"] in ("*", qtype):
                return r
        return None

    def answer(wire):
        try:
            q = dns.message.from_wire(wire)
        except Exception:
            return None
        if not q.question:
            return None
        qq = q.question[0]
        name = qq.name.to_text().lower()
        qtype = dns.rdatatype.to_text(qq.rdtype)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        rule = match(name, qtype)
        if rule:
            act = rule["action"]
            if act == "drop":
                return None
            if act == "servfail":
                r.set_rcode(dns.rcode.SERVFAIL)
                return r
            if act == "refused":
                r.set_rcode(dns.rcode.REFUSED)
                return r
            if act == "nxdomain":
                r.set_rcode(dns.rcode.NXDOMAIN)
                return r
            rd = rule["rdata"]
        else:
            rd = static.get((name, qtype))
        if rd:
            rrs = dns.rrset.from_text_list(qq.name, 60, "IN", qtype, rd)
            r.answer.append(rrs)
            return r
        soa = dns.rrset.from_text_list(origin, 60, "IN", "SOA",
                                       static[(origin, "SOA")])
        r.authority.append(soa)
        if not any(k[0] == name for k in static) and not name == origin:
            r.set_rcode(dns.rcode.NXDOMAIN)
        return r

    class UDP(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            r = answer(data)
            if r is not None:
                w = r.to_wire()
                if len(w) > 512:
                    r.flags |= dns.flags.TC
                    r.answer = []
                    w = r.to_wire()
                sock.sendto(w, self.client_address)

    class TCP(socketserver.BaseRequestHandler):
        def handle(self):
            s = self.request
            s.settimeout(10)
            while True:
                hdr = _recvn(s, 2)
                if not hdr:
                    return
                data = _recvn(s, struct.unpack("!H", hdr)[0])
                if data is None:
                    return
                r = answer(data)
                if r is None:
                    continue
                w = r.to_wire()
                s.sendall(struct.pack("!H", len(w)) + w)

    class TS(socketserver.ThreadingMixIn, socketserver.TCPServer):
        allow_reuse_address = True
        daemon_threads = True

    class US(socketserver.ThreadingMixIn, socketserver.UDPServer):
        allow_reuse_address = True
        daemon_threads = True

    us = US((addr, port), UDP)
    ts = TS((addr, port), TCP)
    threading.Thread(target=ts.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    us.serve_forever()


def _recvn(s, n):
    b = b""
    while len(b) < n:
        try:
            c = s.recv(n - len(b))
        except OSError:
            return None
        if not c:
            return None
        b += c
    return b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", default="lab",
                    choices=["lab", "responder"])
    ap.add_argument("--addr", default="127.0.53.1")
    ap.add_argument("--port", type=int, default=5353)
    ap.add_argument("--dir")
    ap.add_argument("--rules")
    a = ap.parse_args()
    if a.mode == "responder":
        _responder_main(a.addr, a.port, a.rules)
        return
    lab = DnsLab(a.addr, a.port, a.dir, keep=a.dir is not None)
    lab.start()
    print("dns.resolver = %s" % lab.resolver)
    print("dns.trust_anchor = %s" % lab.trust_anchor)
    print("lab dir: %s (knotd :%d, responder :%d)" % (lab.dir, lab.knot_port,
                                                      lab.resp_port))
    sys.stdout.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM])
    try:
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    finally:
        lab.stop()


if __name__ == "__main__":
    main()
