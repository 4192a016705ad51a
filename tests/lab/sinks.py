#!/usr/bin/python3
"""Test receivers ("sinks") for mtad's delivery tests.

Every sink runs in its own child process (so a hung or stalled one can be
killed by PID), listens on a 127.x address and port chosen by the test, and
records what it saw as files in its own directory:

  AioSink           aiosmtpd with knobs (STARTTLS, per-recipient replies,
                    fail-first-N, recipient cap, hidden extensions, SNI log).
  RawSink           a hand-written SMTP server for byte-level control (exact
                    EHLO list, 502 to EHLO, injection after 220, 454, close or
                    421 or stall at a step, lenient DATA terminator, BDAT) that
                    records every session's raw bytes.
  SmtpSink          Postfix's /usr/sbin/smtp-sink with connection and message
                    counters.
  StartTlsStripper  a TCP proxy that removes STARTTLS from the EHLO reply
                    (optionally answers STARTTLS with 454 itself).

Certificates: make_ca(), issue(), self_signed() (python3-cryptography).

All four: start() returns once the socket is in LISTEN state; stop(); use as
context managers; the `sink_lab` pytest fixture starts them in the test's
tmp_path and stops them by PID.  See README.md next to this file.

Run as a script: `/usr/bin/python3 sinks.py run KIND DIR` (internal: reads
DIR/config.json) or, by hand, `/usr/bin/python3 sinks.py aio|raw|strip
--listen 127.1.0.9:2525 [--dir D] [--set key=JSON ...]`.
"""
import base64
import datetime
import hashlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

PYTHON = "/usr/bin/python3"
SMTP_SINK = "/usr/sbin/smtp-sink"
HERE = os.path.dirname(os.path.abspath(__file__))
THIS = os.path.abspath(__file__)

# ---------------------------------------------------------------------------
# Addresses.  mtad's own tests use 127.0.X.Y (tests/integration/lib); the
# lab uses 127.1.X.Y with X mixed from the pid so parallel runs do not clash.
_counter = itertools.count()


def alloc_addr():
    """A fresh loopback address 127.1.X.Y for one sink."""
    n = next(_counter)
    w = os.environ.get("PYTEST_XDIST_WORKER", "")
    wi = int(w[2:]) if w.startswith("gw") else 0
    base = 16 + ((os.getpid() + 7 * wi) % 59) * 4
    return "127.1.%d.%d" % (base + (n // 250) % 4, 2 + n % 250)


def free_port(addr):
    s = socket.socket()
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def is_listening(addr, port):
    """True if a TCP socket is in LISTEN state on addr:port (reads
    /proc/net/tcp, so it does not make a connection a sink would count)."""
    want_ip = "%08X" % struct.unpack("<I", socket.inet_aton(addr))[0]
    want_any = "00000000"
    want_port = "%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                ip, p = parts[1].split(":")
                if parts[3] == "0A" and p == want_port and ip in (want_ip, want_any):
                    return True
    except OSError:
        pass
    return False


# ---------------------------------------------------------------------------
# Certificates (python3-cryptography)

def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _when(v, default):
    """datetime, timedelta (from now) or a number of days (from now)."""
    if v is None:
        return default
    if isinstance(v, datetime.datetime):
        return v if v.tzinfo else v.replace(tzinfo=datetime.timezone.utc)
    if isinstance(v, datetime.timedelta):
        return _now() + v
    return _now() + datetime.timedelta(days=v)


def _new_key(key_type):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError("key_type must be 'ec' or 'rsa'")


class CertKey:
    """A certificate, its private key and its issuer (a CertKey or None)."""

    def __init__(self, cert, key, issuer=None):
        self.cert = cert
        self.key = key
        self.issuer = issuer

    @property
    def self_signed(self):
        return self.issuer is None

    def chain(self, root=False):
        """Issuers above this cert: intermediates, plus the root if root."""
        out, c = [], self.issuer
        while c is not None:
            if c.issuer is not None or root:
                out.append(c)
            c = c.issuer
        return out

    def cert_pem(self):
        from cryptography.hazmat.primitives import serialization
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self):
        from cryptography.hazmat.primitives import serialization
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def der(self):
        from cryptography.hazmat.primitives import serialization
        return self.cert.public_bytes(serialization.Encoding.DER)

    def spki_der(self):
        from cryptography.hazmat.primitives import serialization
        return self.cert.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo)

    def tlsa(self, usage=3, selector=1, mtype=1):
        """TLSA record data 'usage selector mtype hex' for this cert."""
        data = self.spki_der() if selector == 1 else self.der()
        h = {0: lambda b: b, 1: lambda b: hashlib.sha256(b).digest(),
             2: lambda b: hashlib.sha512(b).digest()}[mtype](data)
        return "%d %d %d %s" % (usage, selector, mtype, h.hex())

    def write(self, directory, name="cert", chain=True, root=False):
        """Write NAME.pem (leaf [+ intermediates] [+ root]) and NAME.key;
        returns (cert_path, key_path)."""
        os.makedirs(directory, exist_ok=True)
        cp = os.path.join(directory, name + ".pem")
        kp = os.path.join(directory, name + ".key")
        with open(cp, "wb") as f:
            f.write(self.cert_pem())
            if chain:
                for c in self.chain(root=root):
                    f.write(c.cert_pem())
        with open(kp, "wb") as f:
            f.write(self.key_pem())
        os.chmod(kp, 0o600)
        return cp, kp

    def write_ca(self, path):
        """Write this cert alone (e.g. a root for tls.ca_file); returns path."""
        with open(path, "wb") as f:
            f.write(self.cert_pem())
        return path


def _build(subject_cn, issuer, key, names=(), not_before=None, not_after=None,
           is_ca=False, path_len=None, san=True, eku_server=True):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    nb_default = _now() - datetime.timedelta(days=1)
    na = _when(not_after, _now() + datetime.timedelta(days=30))
    nb = _when(not_before, min(nb_default, na - datetime.timedelta(days=1)))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]
                        if subject_cn else [])
    issuer_name = issuer.cert.subject if issuer else subject
    signing_key = issuer.key if issuer else key
    b = (x509.CertificateBuilder()
         .subject_name(subject).issuer_name(issuer_name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(nb).not_valid_after(na)
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_len if is_ca else None), True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
    if issuer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), False)
    if is_ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), True)
    else:
        if san and names:
            alt = []
            for n in names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    alt.append(x509.DNSName(n))
            b = b.add_extension(x509.SubjectAlternativeName(alt), False)
        if eku_server:
            b = b.add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    return b.sign(signing_key, hashes.SHA256())


def make_ca(name="Lab Root CA", issuer=None, not_before=None, not_after=None,
            path_len=None, key_type="ec"):
    """A CA: self-signed root, or an intermediate when issuer (a CA) is given.
    not_before/not_after: datetime, timedelta from now, or days from now."""
    key = _new_key(key_type)
    na = not_after if not_after is not None else 3650
    cert = _build(name, issuer, key, not_before=not_before, not_after=na,
                  is_ca=True, path_len=path_len)
    return CertKey(cert, key, issuer)


def issue(ca, names, not_before=None, not_after=None, cn=None, san=True,
          key_type="ec", eku_server=True):
    """A leaf for names (str or list; IPs become iPAddress SANs) issued by ca
    (a CertKey; None makes it self-signed).  cn: subject CN (default the first
    name; "" for none); san=False omits the SAN extension (the C-cn case)."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    key = _new_key(key_type)
    if cn is None:
        cn = names[0] if names else ""
    cert = _build(cn, ca, key, names=names, not_before=not_before,
                  not_after=not_after, san=san, eku_server=eku_server)
    return CertKey(cert, key, ca)


def self_signed(names, **kw):
    """A self-signed leaf for names (C-self)."""
    return issue(None, names, **kw)


# ---------------------------------------------------------------------------
# JSON helpers shared by parent and child

def _enc(v):
    if isinstance(v, (bytes, bytearray)):
        return {"__b64__": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        return {k: _enc(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v]
    return v


def _dec(v):
    if isinstance(v, dict):
        if set(v) == {"__b64__"}:
            return base64.b64decode(v["__b64__"])
        return {k: _dec(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def _write_json_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.rename(tmp, path)


def _read_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(_dec(json.loads(line)))
                except ValueError:
                    pass   # a line being written right now
    except FileNotFoundError:
        pass
    return out


class _EventLog:
    """events.jsonl, one JSON object a line, flushed at once (child side)."""

    def __init__(self, path):
        self.f = open(path, "a")
        self.lock = threading.Lock()
        self.t0 = time.time()

    def __call__(self, event, **kw):
        kw["event"] = event
        kw["t"] = round(time.time(), 4)
        line = json.dumps(_enc(kw), sort_keys=True)
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()


# ---------------------------------------------------------------------------
# Parent side: a sink process

class _ProcSink:
    """Common parent-side part: config file, child process, PID file, stop by
    PID, readiness by LISTEN state, reading the records."""

    kind = None

    def __init__(self, addr, port=None, workdir=None, **opts):
        self.addr = addr
        self.port = port or free_port(addr)
        self._own_dir = workdir is None
        self.dir = str(workdir) if workdir else tempfile.mkdtemp(
            prefix="mtlab-%s-" % self.kind, dir="/tmp")
        os.makedirs(self.dir, exist_ok=True)
        # reachable by a daemon that dropped root (public files 0644,
        # private keys stay 0600)
        os.chmod(self.dir, 0o711)
        self.opts = opts
        self.proc = None

    # -- lifecycle
    @property
    def endpoint(self):
        return "%s:%d" % (self.addr, self.port)

    @property
    def pid_file(self):
        return os.path.join(self.dir, "sink.pid")

    def _argv(self):
        return [PYTHON, THIS, "run", self.kind, self.dir]

    def _config(self):
        return dict(self.opts, addr=self.addr, port=self.port)

    def start(self, timeout=10.0):
        if self.proc is not None:
            raise RuntimeError("already started")
        _write_json_atomic(os.path.join(self.dir, "config.json"), _enc(self._config()))
        out = open(os.path.join(self.dir, "stdout.log"), "ab")
        err = open(os.path.join(self.dir, "stderr.log"), "ab")
        try:
            self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, cwd=self.dir,
                                         preexec_fn=_die_with_parent)
        finally:
            out.close()
            err.close()
        with open(self.pid_file, "w") as f:
            f.write("%d\n" % self.proc.pid)
        deadline = time.monotonic() + timeout
        while not is_listening(self.addr, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError("%s sink exited (rc %s):\n%s" % (
                    self.kind, self.proc.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("%s sink not listening on %s after %.0fs:\n%s" % (
                    self.kind, self.endpoint, timeout, self.log_tail()))
            time.sleep(0.02)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM the child by PID, SIGKILL after timeout.  Idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        try:
            os.unlink(self.pid_file)
        except FileNotFoundError:
            pass

    def cleanup(self):
        """Remove the directory if the sink made it itself."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        if exc_type is None and self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def log_tail(self, n=40):
        out = []
        for name in ("stderr.log", "stdout.log", "sink.log"):
            p = os.path.join(self.dir, name)
            if os.path.exists(p):
                with open(p, "rb") as f:
                    lines = f.read().decode("utf-8", "replace").splitlines()[-n:]
                out.append("--- %s\n%s" % (name, "\n".join(lines)))
        return "\n".join(out)

    # -- records
    def events(self, event=None, **match):
        """Records from events.jsonl, optionally filtered by event name and
        field values."""
        evs = _read_jsonl(os.path.join(self.dir, "events.jsonl"))
        return [e for e in evs if (event is None or e["event"] == event)
                and all(e.get(k) == v for k, v in match.items())]

    def connections(self):
        """Number of TCP connections accepted so far."""
        return len(self.events("connect"))

    def wait_for(self, pred, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError("%s sink %s: timed out waiting for %s" % (
                    self.kind, self.endpoint, what))
            time.sleep(0.05)

    def wait_event(self, event, n=1, timeout=10.0, **match):
        return self.wait_for(lambda: len(self.events(event, **match)) >= n and
                             self.events(event, **match), timeout,
                             "%d x event %s %r" % (n, event, match))


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM if the test process dies."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


class _MessageReader:
    """Parent-side access to msg-*.json + .eml records (AioSink, RawSink)."""

    def _records(self, prefix):
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.startswith(prefix) and name.endswith(".json"):
                with open(os.path.join(self.dir, name)) as f:
                    rec = _dec(json.load(f))
                eml = os.path.join(self.dir, name[:-5] + ".eml")
                if os.path.exists(eml):
                    with open(eml, "rb") as f:
                        rec["data"] = f.read()
                rec["file"] = os.path.join(self.dir, name)
                out.append(rec)
        out.sort(key=lambda r: r["seq"])
        return out

    def transactions(self):
        """Every transaction that reached the end of DATA/BDAT LAST, with the
        reply given ('reply') and whether it was 2xx ('accepted')."""
        return self._records("msg-")

    def messages(self):
        """Accepted (2xx at end of data) messages, oldest first; each a dict
        with 'data' = the exact bytes received after dot-unstuffing."""
        return [r for r in self.transactions() if r["accepted"]]

    def wait_messages(self, n=1, timeout=10.0):
        return self.wait_for(lambda: len(self.messages()) >= n and self.messages(),
                             timeout, "%d message(s)" % n)


# ---------------------------------------------------------------------------
# AioSink

class AioSink(_ProcSink, _MessageReader):
    """aiosmtpd receiver in a child process.

    AioSink(addr, port=None, workdir=None, *, hostname="aiosink.test",
            tls=None | (cert_path, key_path), require_tls=False,
            tls_max_version=None | "TLSv1_2"..., tls_min_version=None,
            size=10485760 | None (SIZE hidden, no limit),
            eightbitmime=True, smtputf8=True, pipelining=True,
            enhancedstatuscodes=True, dsn=False,
            ehlo_extra=[], hide=[],          # EHLO keywords to add / remove
            accept_params=[],                # extra MAIL/RCPT params to accept
            mail_reply=None, rcpt_replies={}, data_reply=None,
            max_rcpts=None, rcpt_cap_reply="452 4.5.3 Too many recipients",
            fail_first=0, fail_stage="data" | "connect" | "mail" | "rcpt",
            fail_reply="451 4.3.0 Try again later", timeout=60)

    A reply given as a string is sent as is; a 2xx reply to RCPT/MAIL is
    taken as acceptance.  fail_first counts attempts (transactions, or
    connections for "connect") in a counter file in the sink's directory, so
    it survives connections and sink restarts.
    """

    kind = "aio"


# ---------------------------------------------------------------------------
# RawSink

class RawSink(_ProcSink, _MessageReader):
    """Hand-written SMTP server (thread per connection) in a child process.

    RawSink(addr, port=None, workdir=None, *, hostname="rawsink.test",
            greeting=None ("220 <hostname> ESMTP RawSink"),
            ehlo_ext=None (default list; exact list when given),
            ehlo_ext_tls=None (after TLS; default ehlo_ext minus STARTTLS),
            ehlo_reply=None (e.g. "502 5.5.1 EHLO not supported"),
            helo_reply=None, tls=None | (cert, key),
            starttls_reply="220 2.0.0 Ready to start TLS",
            starttls_inject=b"" (bytes sent after the 220 line, same segment),
            replies={} (command -> reply; commands: MAIL RCPT DATA DOT BDAT
                        RSET NOOP QUIT VRFY; DATA replaces the 354),
            rcpt_replies={}, max_rcpts=None,
            close_at=None (command, "CONNECT", "DOT" or "TLS": close, no reply),
            reset_at=None (the same steps, "BODY" after the 354: reset the
                           connection, RST via SO_LINGER 0, no reply),
            reply_421_at=None (command or "CONNECT": 421 and close),
            stall_at=None (command, "CONNECT", "BODY" (after 354), "DOT",
                           "TLS" (after the 220 to STARTTLS)),
            stall_read=True (keep reading and recording while stalled),
            stall_max=600, lenient_dot=False)

    Every session's bytes are recorded in session-NNNN.jsonl (chunks with
    direction C/S and a tls flag): see session(), sessions().
    """

    kind = "raw"

    def sessions(self):
        """One dict per connection: seq, client (bytes from the client),
        server (bytes sent), client_plain / client_tls (split at the TLS
        handshake), chunks [(dir, tls, bytes)]."""
        out = []
        for name in sorted(os.listdir(self.dir)):
            m = re.match(r"session-(\d+)\.jsonl$", name)
            if m:
                out.append(self.session(int(m.group(1))))
        return out

    def session(self, seq):
        chunks = _read_jsonl(os.path.join(self.dir, "session-%04d.jsonl" % seq))
        s = {"seq": seq, "chunks": [(c["d"], c["tls"], c["b"]) for c in chunks]}
        for key, d, tls in (("client", "C", None), ("server", "S", None),
                            ("client_plain", "C", False), ("client_tls", "C", True),
                            ("server_plain", "S", False), ("server_tls", "S", True)):
            s[key] = b"".join(c["b"] for c in chunks
                              if c["d"] == d and (tls is None or c["tls"] == tls))
        return s


# ---------------------------------------------------------------------------
# StartTlsStripper

class StartTlsStripper(_ProcSink):
    """TCP proxy addr:port -> backend that removes STARTTLS from EHLO replies.

    StartTlsStripper(addr, backend=(host, port), port=None, workdir=None, *,
                     strip=True, answer_454=False,
                     reply_454="454 4.7.0 TLS not available")

    strip: drop '250-STARTTLS'/'250 STARTTLS' lines from multi-line 250
    replies, keeping the reply well-formed.  answer_454: answer a client's
    STARTTLS with reply_454 without forwarding it.  Events: connect,
    stripped, starttls_intercepted, starttls_forwarded, disconnect.
    """

    kind = "strip"

    def __init__(self, addr, backend, port=None, workdir=None, **opts):
        if hasattr(backend, "addr"):
            backend = (backend.addr, backend.port)
        super().__init__(addr, port, workdir, backend=list(backend), **opts)


# ---------------------------------------------------------------------------
# SmtpSink (Postfix smtp-sink)

class SmtpSink(_ProcSink):
    """Postfix's smtp-sink on addr:port, run with -c (counters), -v (one
    'connect' line per connection on stderr) and -d DIR/dump/... (one file
    per message).

    SmtpSink(addr, port=None, workdir=None, *, hostname="smtp-sink.test",
             options=[] (extra smtp-sink flags, e.g. ["-8", "-r", "RCPT"]),
             backlog=16, dump=True)

    counts() -> {"connections", "sessions_ended", "quits", "messages"};
    messages() -> dump files parsed (helo, mail_args, rcpt_args, data).
    """

    kind = "smtp-sink"

    def __init__(self, addr, port=None, workdir=None, hostname="smtp-sink.test",
                 options=(), backlog=16, dump=True):
        super().__init__(addr, port, workdir)
        self.hostname = hostname
        self.options = list(options)
        self.backlog = backlog
        self.dump = dump

    def _argv(self):
        if not os.access(SMTP_SINK, os.X_OK):
            raise RuntimeError("%s missing: install Debian package postfix" % SMTP_SINK)
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            argv += ["-u", "root"]   # required when running as root
        argv += ["-c", "-v", "-h", self.hostname]
        if self.dump:
            argv += ["-d", os.path.join(self.dir, "dump", "%Y%m%d%H%M%S.")]
        argv += self.options + ["inet:%s:%d" % (self.addr, self.port), str(self.backlog)]
        return argv

    def _config(self):
        # smtp-sink is spawned directly (its PID is the one in sink.pid);
        # config.json only documents the command line.
        return {"argv": self._argv()}

    def _read(self, name):
        try:
            with open(os.path.join(self.dir, name), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def counts(self):
        err = self._read("stderr.log")
        conns = len(re.findall(r": connect \(", err))
        c = re.findall(r"sess=(\d+) quit=(\d+) mesg=(\d+)", self._read("stdout.log"))
        sess, quits, mesg = map(int, c[-1]) if c else (0, 0, 0)
        return {"connections": conns, "sessions_ended": sess, "quits": quits,
                "messages": mesg}

    def connections(self):
        return self.counts()["connections"]

    def transcript(self):
        """smtp-sink's -v lines (commands as it saw them)."""
        return [l.split(": ", 1)[1] for l in self._read("stderr.log").splitlines()
                if l.startswith(SMTP_SINK + ": ")]

    def messages(self):
        d = os.path.join(self.dir, "dump")
        out = []
        if not os.path.isdir(d):
            return out
        for name in sorted(os.listdir(d), key=lambda n: os.stat(os.path.join(d, n)).st_mtime_ns):
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            rec = {"file": os.path.join(d, name), "helo": None, "mail_args": None,
                   "rcpt_args": [], "client_addr": None}
            lines = raw.split(b"\n")
            i = 0
            while i < len(lines):
                l = lines[i].decode("utf-8", "replace")
                i += 1
                if l.startswith("X-Client-Addr: "):
                    rec["client_addr"] = l[15:]
                elif l.startswith("X-Helo-Args: "):
                    rec["helo"] = l[13:]
                elif l.startswith("X-Mail-Args: "):
                    rec["mail_args"] = l[13:]
                elif l.startswith("X-Rcpt-Args: "):
                    rec["rcpt_args"].append(l[13:])
                elif l.startswith("Received: "):
                    i += 2   # three-line Received header ends smtp-sink's part
                    break
            body = b"\n".join(lines[i:])
            # smtp-sink stores LF line ends and appends one empty line
            rec["data"] = body[:-1] if body.endswith(b"\n\n") else body
            out.append(rec)
        return out


# ===========================================================================
# Child side

def _log_setup(d):
    import logging
    logging.basicConfig(filename=os.path.join(d, "sink.log"), level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


class _Counter:
    """A persistent counter file (fail-first-N survives restarts)."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            try:
                with open(self.path) as f:
                    n = int(f.read().strip() or 0)
            except FileNotFoundError:
                n = 0
            n += 1
            with open(self.path + ".tmp", "w") as f:
                f.write("%d\n" % n)
            os.rename(self.path + ".tmp", self.path)
            return n


def _tls_context(cfg, on_sni):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg["tls"][0], cfg["tls"][1])
    for key, attr in (("tls_min_version", "minimum_version"),
                      ("tls_max_version", "maximum_version")):
        if cfg.get(key):
            setattr(ctx, attr, getattr(ssl.TLSVersion, cfg[key]))

    def cb(sslobj, server_name, _ctx):
        on_sni(sslobj, server_name)
        return None
    ctx.sni_callback = cb
    return ctx


class _SniTable:
    """Server name per TLS object (SSLObject/SSLSocket are not hashable in a
    stable way across the handshake, so key by id and keep the object)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.names = {}

    def set(self, obj, name):
        with self.lock:
            self.names[id(obj)] = (obj, name)

    def get(self, obj):
        with self.lock:
            v = self.names.pop(id(obj), None)
        return v[1] if v and v[0] is obj else None


def _write_message(d, seq, rec, data):
    base = os.path.join(d, "msg-%05d" % seq)
    with open(base + ".eml", "wb") as f:
        f.write(data)
    rec["size"] = len(data)
    rec["sha256"] = hashlib.sha256(data).hexdigest()
    rec["seq"] = seq
    _write_json_atomic(base + ".json", _enc(rec))


def _run_aio(d, cfg):
    import asyncio
    from aiosmtpd.smtp import SMTP

    ev = _EventLog(os.path.join(d, "events.jsonl"))
    fails = _Counter(os.path.join(d, "attempts.count"))
    conn_seq = itertools.count(1)
    msg_seq = itertools.count(1)
    sni = _SniTable()
    hostname = cfg.get("hostname", "aiosink.test")
    tls_ctx = _tls_context(cfg, sni.set) if cfg.get("tls") else None
    size = cfg.get("size", 10485760)
    fail_first = int(cfg.get("fail_first", 0))
    fail_stage = cfg.get("fail_stage", "data")
    fail_reply = cfg.get("fail_reply", "451 4.3.0 Try again later")
    rcpt_replies = {k.lower(): v for k, v in cfg.get("rcpt_replies", {}).items()}
    dsn_params = ["RET", "ENVID", "NOTIFY", "ORCPT"] if cfg.get("dsn") else []
    accept_params = [p.upper() for p in cfg.get("accept_params", [])] + dsn_params
    hide = {h.upper() for h in cfg.get("hide", [])}
    # MAIL parameters of extensions not offered are refused with 555
    unoffered_params = set()
    if not cfg.get("eightbitmime", True) or "8BITMIME" in hide:
        unoffered_params.add("BODY")
    if not size or "SIZE" in hide:
        unoffered_params.add("SIZE")
    if "DSN" in hide:
        accept_params = [p for p in accept_params if p not in dsn_params]
    if "SMTPUTF8" in hide:
        cfg["smtputf8"] = False

    def tls_info(session):
        if session.ssl is None:
            return {"tls": False, "tls_version": None, "tls_cipher": None, "sni": None}
        so = session.ssl.get("ssl_object")
        info = {"tls": True, "tls_version": so.version() if so else None,
                "tls_cipher": so.cipher()[0] if so and so.cipher() else None,
                "sni": None}
        if so is not None:
            if not hasattr(session, "lab_sni"):
                session.lab_sni = sni.get(so)
            info["sni"] = session.lab_sni
        return info

    class Handler:
        async def handle_EHLO(self, server, session, envelope, hostname_, responses):
            session.host_name = hostname_
            ext = []
            if size:
                ext.append("SIZE %d" % size)
            if cfg.get("eightbitmime", True):
                ext.append("8BITMIME")
            if cfg.get("smtputf8", True):
                ext.append("SMTPUTF8")
            if cfg.get("pipelining", True):
                ext.append("PIPELINING")
            if cfg.get("enhancedstatuscodes", True):
                ext.append("ENHANCEDSTATUSCODES")
            if cfg.get("dsn"):
                ext.append("DSN")
            if tls_ctx is not None and session.ssl is None:
                ext.append("STARTTLS")
            ext += cfg.get("ehlo_extra", [])
            ext = [e for e in ext if e.split()[0].upper() not in hide]
            lines = [hostname] + ext
            ev("ehlo", conn=server.lab_seq, helo=hostname_, ext=ext, **tls_info(session))
            return ["250%s%s" % ("-" if i < len(lines) - 1 else " ", l)
                    for i, l in enumerate(lines)]

        async def handle_HELO(self, server, session, envelope, hostname_):
            session.host_name = hostname_
            ev("helo", conn=server.lab_seq, helo=hostname_, **tls_info(session))
            return "250 %s" % hostname

        async def handle_MAIL(self, server, session, envelope, address, mail_options):
            server.lab_fail = False
            if fail_first and fail_stage != "connect":
                n = fails.next()
                server.lab_fail = n <= fail_first
            raw = server.lab_raw_arg
            hidden = [o for o in mail_options if o.split("=")[0] in unoffered_params]
            if hidden:
                reply = "555 5.5.4 %s not supported" % hidden[0]
            elif server.lab_fail and fail_stage == "mail":
                reply = fail_reply
            else:
                reply = cfg.get("mail_reply") or "250 2.1.0 OK"
            if reply.startswith("2"):
                envelope.mail_from = address
                envelope.mail_options.extend(mail_options)
                server.lab_mail_raw = raw
                server.lab_rcpt_raw = []
                server.lab_rcpt_opts = []
            ev("mail", conn=server.lab_seq, address=address, args=raw, reply=reply,
               options=mail_options)
            return reply

        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            raw = server.lab_raw_arg
            cap = cfg.get("max_rcpts")
            if cap is not None and len(envelope.rcpt_tos) >= cap:
                reply = cfg.get("rcpt_cap_reply", "452 4.5.3 Too many recipients")
            elif server.lab_fail and fail_stage == "rcpt":
                reply = fail_reply
            else:
                reply = rcpt_replies.get(address.lower()) or "250 2.1.5 OK"
            if reply.startswith("2"):
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(rcpt_options)
                server.lab_rcpt_raw.append(raw)
                server.lab_rcpt_opts.append(rcpt_options)
            ev("rcpt", conn=server.lab_seq, address=address, args=raw, reply=reply,
               options=rcpt_options)
            return reply

        async def handle_DATA(self, server, session, envelope):
            if server.lab_fail and fail_stage == "data":
                reply = fail_reply
            else:
                reply = cfg.get("data_reply") or "250 2.0.0 OK queued"
            seq = next(msg_seq)
            rec = {"conn": server.lab_seq, "peer": list(session.peer[:2]),
                   "helo": session.host_name, "mail_from": envelope.mail_from,
                   "rcpt_tos": list(envelope.rcpt_tos),
                   "mail_options": list(envelope.mail_options),
                   "rcpt_options": list(envelope.rcpt_options),
                   "rcpt_params": server.lab_rcpt_opts,
                   "mail_args": server.lab_mail_raw, "rcpt_args": server.lab_rcpt_raw,
                   "reply": reply, "accepted": reply.startswith("2"),
                   "smtputf8": bool(envelope.smtp_utf8)}
            rec.update(tls_info(session))
            _write_message(d, seq, rec, envelope.original_content)
            ev("data", conn=server.lab_seq, seq=seq, reply=reply,
               size=len(envelope.original_content))
            return reply

    class LabSMTP(SMTP):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.lab_seq = next(conn_seq)
            self.lab_fail = False
            self.lab_raw_arg = None
            self.lab_mail_raw = None
            self.lab_rcpt_raw = []
            self.lab_rcpt_opts = []
            self.lab_closed = False
            self.lab_disc = False

        def _getparams(self, params):
            r = super()._getparams(params)
            if r is not None:
                for p in accept_params:
                    r.pop(p, None)
            return r

        async def smtp_MAIL(self, arg):
            self.lab_raw_arg = arg
            return await super().smtp_MAIL(arg)

        async def smtp_RCPT(self, arg):
            self.lab_raw_arg = arg
            return await super().smtp_RCPT(arg)

        async def smtp_STARTTLS(self, arg):
            ev("starttls", conn=self.lab_seq)
            r = await super().smtp_STARTTLS(arg)
            if self.session.ssl is not None:
                ev("tls", conn=self.lab_seq, **tls_info(self.session))
            return r

        def connection_made(self, transport):
            first = self.transport is None
            if first:
                peer = transport.get_extra_info("peername")
                ev("connect", conn=self.lab_seq, peer=list(peer[:2]))
                if fail_first and fail_stage == "connect" and fails.next() <= fail_first:
                    ev("reject_connect", conn=self.lab_seq, reply=fail_reply)
                    transport.write(fail_reply.encode() + b"\r\n")
                    transport.close()
                    self.lab_closed = True
                    return
            super().connection_made(transport)

        def connection_lost(self, error):
            if not self.lab_disc:
                self.lab_disc = True
                ev("disconnect", conn=self.lab_seq)
            if self.lab_closed:
                return
            super().connection_lost(error)

    handler = Handler()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def factory():
        return LabSMTP(handler, hostname=hostname, data_size_limit=size or None,
                       enable_SMTPUTF8=cfg.get("smtputf8", True),
                       tls_context=tls_ctx,
                       require_starttls=bool(cfg.get("require_tls")),
                       timeout=cfg.get("timeout", 60), loop=loop)

    server = loop.run_until_complete(loop.create_server(
        factory, host=cfg["addr"], port=cfg["port"], reuse_address=True))
    ev("listening", addr=cfg["addr"], port=cfg["port"])
    try:
        loop.run_forever()
    finally:
        server.close()


class _RawConn:
    """One RawSink session (child side)."""

    class Closed(Exception):
        pass

    def __init__(self, sock, seq, cfg, d, ev, msg_seq, sni):
        self.sock = sock
        self.seq = seq
        self.cfg = cfg
        self.d = d
        self.ev = ev
        self.msg_seq = msg_seq
        self.sni = sni
        self.tls = False
        self.tls_version = None
        self.sni_name = None
        self.buf = b""
        self.log = open(os.path.join(d, "session-%04d.jsonl" % seq), "a")
        self.hostname = cfg.get("hostname", "rawsink.test")
        self.helo = None
        self.reset_tx()

    def reset_tx(self):
        self.mail = None
        self.rcpts = []
        self.bdat = None

    # -- I/O with recording
    def _chunk(self, d, b):
        self.log.write(json.dumps({"d": d, "tls": self.tls,
                                   "b": {"__b64__": base64.b64encode(b).decode()}}) + "\n")
        self.log.flush()

    def recv_more(self):
        try:
            b = self.sock.recv(65536)
        except socket.timeout:
            raise                       # stall(): poll again
        except (ConnectionError, ssl.SSLError, OSError) as e:
            raise self.Closed("recv: %s" % e)
        if not b:
            raise self.Closed("eof")
        self._chunk("C", b)
        self.buf += b

    def send(self, b):
        if isinstance(b, str):
            b = b.encode("utf-8")
        self._chunk("S", b)
        try:
            self.sock.sendall(b)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            raise self.Closed("send: %s" % e)

    def reply(self, text):
        self.send(text.encode("utf-8") + b"\r\n")
        if text.startswith("421"):
            raise self.Closed("421 sent")

    def readline(self):
        while b"\n" not in self.buf:
            self.recv_more()
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def read_exact(self, n):
        while len(self.buf) < n:
            self.recv_more()
        b, self.buf = self.buf[:n], self.buf[n:]
        return b

    # -- step hooks: close / 421 / stall at a named step
    def step(self, name):
        cfg = self.cfg
        if cfg.get("close_at") == name:
            self.ev("close_at", conn=self.seq, step=name)
            raise self.Closed("close_at " + name)
        if cfg.get("reset_at") == name:
            self.ev("reset_at", conn=self.seq, step=name)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
            raise self.Closed("reset_at " + name)
        if cfg.get("reply_421_at") == name:
            self.ev("reply_421", conn=self.seq, step=name)
            self.reply(cfg.get("reply_421", "421 4.3.2 %s closing connection" % self.hostname))
        if cfg.get("stall_at") == name:
            self.stall(name)

    def stall(self, name):
        self.ev("stall", conn=self.seq, step=name)
        deadline = time.monotonic() + float(self.cfg.get("stall_max", 600))
        read = self.cfg.get("stall_read", True)
        while time.monotonic() < deadline:
            if read:
                self.sock.settimeout(0.2)
                try:
                    self.recv_more()
                except socket.timeout:
                    pass
                finally:
                    try:
                        self.sock.settimeout(None)
                    except OSError:
                        pass
            else:
                time.sleep(0.2)
        raise self.Closed("stall_max")

    # -- session
    def ext_list(self):
        cfg = self.cfg
        if self.tls:
            if cfg.get("ehlo_ext_tls") is not None:
                return list(cfg["ehlo_ext_tls"])
            return [e for e in self.ext_list_plain() if e.upper() != "STARTTLS"]
        return self.ext_list_plain()

    def ext_list_plain(self):
        cfg = self.cfg
        if cfg.get("ehlo_ext") is not None:
            return list(cfg["ehlo_ext"])
        ext = ["PIPELINING", "SIZE 10485760", "8BITMIME", "ENHANCEDSTATUSCODES",
               "DSN", "CHUNKING", "SMTPUTF8"]
        if cfg.get("tls"):
            ext.append("STARTTLS")
        return ext

    def run(self):
        cfg = self.cfg
        self.step("CONNECT")
        self.send((cfg.get("greeting") or "220 %s ESMTP RawSink" % self.hostname)
                  .encode() + b"\r\n")
        while True:
            line = self.readline()
            cmdline = line.rstrip(b"\r\n")
            verb = cmdline.split(b" ", 1)[0].upper().decode("ascii", "replace")
            arg = cmdline[len(verb) + 1:].decode("utf-8", "replace")
            self.ev("command", conn=self.seq, line=line, tls=self.tls)
            self.step(verb)
            getattr(self, "cmd_" + verb, self.cmd_unknown)(verb, arg)

    def cmd_unknown(self, verb, arg):
        self.reply("500 5.5.2 Command unrecognized")

    def cmd_EHLO(self, verb, arg):
        if self.cfg.get("ehlo_reply"):
            self.reply(self.cfg["ehlo_reply"])
            return
        self.helo = arg
        self.reset_tx()
        lines = [self.hostname + " greets " + arg] + self.ext_list()
        self.send("".join("250%s%s\r\n" % ("-" if i < len(lines) - 1 else " ", l)
                          for i, l in enumerate(lines)))

    def cmd_HELO(self, verb, arg):
        self.helo = arg
        self.reset_tx()
        self.reply(self.cfg.get("helo_reply") or "250 %s" % self.hostname)

    def cmd_NOOP(self, verb, arg):
        self.reply(self.cfg.get("replies", {}).get("NOOP", "250 2.0.0 OK"))

    def cmd_RSET(self, verb, arg):
        self.reset_tx()
        self.reply(self.cfg.get("replies", {}).get("RSET", "250 2.0.0 OK"))

    def cmd_VRFY(self, verb, arg):
        self.reply(self.cfg.get("replies", {}).get("VRFY", "252 2.0.0 Cannot VRFY"))

    def cmd_QUIT(self, verb, arg):
        self.send((self.cfg.get("replies", {}).get("QUIT", "221 2.0.0 Bye")) + "\r\n")
        raise self.Closed("quit")

    def cmd_STARTTLS(self, verb, arg):
        cfg = self.cfg
        reply = cfg.get("starttls_reply") or "220 2.0.0 Ready to start TLS"
        if not cfg.get("tls") and not cfg.get("starttls_reply"):
            reply = "454 4.7.0 TLS not available"
        if self.tls:
            reply = "503 5.5.1 TLS already active"
        out = reply.encode() + b"\r\n"
        if reply.startswith("220"):
            out += cfg.get("starttls_inject") or b""
        self.send(out)
        if not reply.startswith("220"):
            return
        self.step("TLS")
        if self.buf:
            self.ev("pre_tls_leftover", conn=self.seq, data=self.buf)
            self.buf = b""
        ctx = _tls_context(cfg, self.sni.set)
        try:
            self.sock = ctx.wrap_socket(self.sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.ev("tls_error", conn=self.seq, error=str(e))
            raise self.Closed("tls handshake: %s" % e)
        self.tls = True
        self.tls_version = self.sock.version()
        self.sni_name = self.sni.get(self.sock)
        self.helo = None
        self.reset_tx()
        self.ev("tls", conn=self.seq, tls_version=self.tls_version, sni=self.sni_name)

    def cmd_MAIL(self, verb, arg):
        r = self.cfg.get("replies", {}).get("MAIL") or "250 2.1.0 OK"
        if r.startswith("2"):
            self.reset_tx()
            self.mail = arg
        self.reply(r)

    def cmd_RCPT(self, verb, arg):
        if self.mail is None:
            self.reply("503 5.5.1 need MAIL")
            return
        m = re.search(r"<([^>]*)>", arg)
        addr = (m.group(1) if m else arg).lower()
        cap = self.cfg.get("max_rcpts")
        rr = {k.lower(): v for k, v in self.cfg.get("rcpt_replies", {}).items()}
        accepted = [r for r in self.rcpts if r["reply"].startswith("2")]
        if cap is not None and len(accepted) >= cap:
            r = "452 4.5.3 Too many recipients"
        else:
            r = rr.get(addr) or self.cfg.get("replies", {}).get("RCPT") or "250 2.1.5 OK"
        self.rcpts.append({"arg": arg, "address": addr, "reply": r})
        self.reply(r)

    def _accepted_rcpts(self):
        return [r for r in self.rcpts if r["reply"].startswith("2")]

    def cmd_DATA(self, verb, arg):
        if self.mail is None or not self._accepted_rcpts():
            self.reply("503 5.5.1 need RCPT" if self.mail else "503 5.5.1 need MAIL")
            return
        r = self.cfg.get("replies", {}).get("DATA") or "354 End data with <CR><LF>.<CR><LF>"
        self.reply(r)
        if not r.startswith("3"):
            return
        self.step("BODY")
        pat = re.compile(rb"(?:\r\n|\n)\.(?:\r\n|\n)" if self.cfg.get("lenient_dot")
                         else rb"\r\n\.\r\n")
        while True:
            pref = b"\r\n" + self.buf
            m = pat.search(pref)
            if m:
                break
            self.recv_more()
        first_end = re.match(rb"\r?\n", pref[m.start():]).end()
        raw = pref[2:m.start() + first_end] if m.start() > 0 else b""
        self.buf = pref[m.end():]
        term = pref[m.start():m.end()] if m.start() > 0 else pref[2:m.end()]
        if self.cfg.get("lenient_dot"):
            lines = raw.splitlines(keepends=True)      # LF ends a line too
            data = b"".join(l[1:] if l.startswith(b".") else l for l in lines)
        else:
            parts = raw.split(b"\r\n")                # only CRLF ends a line
            data = b"\r\n".join(p[1:] if p.startswith(b".") else p for p in parts)
        self.end_of_data("DATA", raw, data, term)

    def cmd_BDAT(self, verb, arg):
        m = re.match(r"\s*(\d+)(\s+LAST)?\s*$", arg, re.I)
        if not m:
            self.reply("501 5.5.4 Syntax: BDAT size [LAST]")
            return
        chunk = self.read_exact(int(m.group(1)))
        if self.mail is None or not self._accepted_rcpts():
            self.reply("503 5.5.1 need RCPT")
            return
        if self.bdat is None:
            self.bdat = b""
        self.bdat += chunk
        if not m.group(2):
            self.reply(self.cfg.get("replies", {}).get("BDAT") or
                       "250 2.0.0 %d octets received" % len(chunk))
            return
        data, self.bdat = self.bdat, None
        self.end_of_data("BDAT", data, data, b"")

    def end_of_data(self, how, raw, data, term):
        self.step("DOT")
        r = self.cfg.get("replies", {}).get("DOT") or "250 2.0.0 OK queued"
        seq = next(self.msg_seq)
        rec = {"conn": self.seq, "helo": self.helo, "mail_args": self.mail,
               "mail_from": (re.search(r"<([^>]*)>", self.mail or "") or [None, None])[1],
               "rcpt_args": [x["arg"] for x in self._accepted_rcpts()],
               "rcpt_tos": [x["address"] for x in self._accepted_rcpts()],
               "rcpts": self.rcpts, "via": how, "data_raw": raw, "terminator": term,
               "reply": r, "accepted": r.startswith("2"), "tls": self.tls,
               "tls_version": self.tls_version, "sni": self.sni_name}
        _write_message(self.d, seq, rec, data)
        self.ev("data", conn=self.seq, seq=seq, reply=r, via=how)
        self.reset_tx()
        self.reply(r)


def _run_raw(d, cfg):
    ev = _EventLog(os.path.join(d, "events.jsonl"))
    msg_seq = itertools.count(1)
    conn_seq = itertools.count(1)
    sni = _SniTable()
    if cfg.get("tls"):
        _tls_context(cfg, sni.set)   # fail early on a bad cert/key
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((cfg["addr"], cfg["port"]))
    ls.listen(64)
    ev("listening", addr=cfg["addr"], port=cfg["port"])

    def serve(sock, peer, seq):
        c = _RawConn(sock, seq, cfg, d, ev, msg_seq, sni)
        why = "?"
        try:
            c.run()
        except _RawConn.Closed as e:
            why = str(e)
        except Exception as e:   # a lab bug: record it, keep serving others
            why = "error: %r" % e
        finally:
            ev("disconnect", conn=seq, why=why)
            try:
                c.sock.close()
            except OSError:
                pass

    while True:
        s, peer = ls.accept()
        seq = next(conn_seq)
        ev("connect", conn=seq, peer=list(peer))
        threading.Thread(target=serve, args=(s, peer, seq), daemon=True).start()


def _run_strip(d, cfg):
    ev = _EventLog(os.path.join(d, "events.jsonl"))
    conn_seq = itertools.count(1)
    backend = tuple(cfg["backend"])
    strip = cfg.get("strip", True)
    answer_454 = cfg.get("answer_454", False)
    reply_454 = cfg.get("reply_454", "454 4.7.0 TLS not available")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((cfg["addr"], cfg["port"]))
    ls.listen(64)
    ev("listening", addr=cfg["addr"], port=cfg["port"])

    def proxy(cs, seq):
        try:
            bs = socket.create_connection(backend, timeout=10)
            bs.settimeout(None)
        except OSError as e:
            ev("backend_error", conn=seq, error=str(e))
            cs.close()
            return
        lock = threading.Lock()   # writes to the client socket
        st = {"raw_c2s": False, "raw_s2c": False, "starttls_fwd": False}

        def to_client(b):
            with lock:
                cs.sendall(b)

        def s2c():
            buf, pending = b"", []
            try:
                while True:
                    data = bs.recv(65536)
                    if not data:
                        break
                    if st["raw_s2c"]:
                        to_client(data)
                        continue
                    buf += data
                    while b"\n" in buf and not st["raw_s2c"]:
                        i = buf.index(b"\n") + 1
                        line, buf = buf[:i], buf[i:]
                        pending.append(line)
                        if line[3:4] == b"-":
                            continue          # more lines of this reply
                        reply, pending = pending, []
                        if strip and reply[0][:3] == b"250" and len(reply) > 1:
                            kept = [l for l in reply
                                    if l[4:].strip().upper() != b"STARTTLS"]
                            if len(kept) != len(reply):
                                kept = [l[:3] + b"-" + l[4:] for l in kept[:-1]] + \
                                       [kept[-1][:3] + b" " + kept[-1][4:]]
                                ev("stripped", conn=seq)
                                reply = kept
                        to_client(b"".join(reply))
                        if st["starttls_fwd"] and reply[0][:3] == b"220":
                            st["raw_s2c"] = True
                            if buf:
                                to_client(buf)
                                buf = b""
                        elif st["starttls_fwd"]:
                            st["starttls_fwd"] = False
            except OSError:
                pass
            finally:
                try:
                    cs.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        t = threading.Thread(target=s2c, daemon=True)
        t.start()
        buf, in_data, data_ctx = b"", False, b"\r\n"
        try:
            while True:
                data = cs.recv(65536)
                if not data:
                    break
                if st["raw_c2s"]:
                    bs.sendall(data)
                    continue
                buf += data
                out = b""
                while not st["raw_c2s"]:
                    if in_data:
                        # data_ctx: the last 2 bytes of message data already
                        # forwarded (CRLF at the start of the data)
                        joined = data_ctx + buf
                        j = joined.find(b"\r\n.\r\n")
                        if j < 0:
                            out += buf
                            data_ctx = joined[-2:]
                            buf = b""
                            break
                        end = j + 5 - len(data_ctx)
                        out += buf[:end]
                        buf = buf[end:]
                        in_data = False
                        continue
                    if b"\n" not in buf:
                        break
                    i = buf.index(b"\n") + 1
                    line, buf = buf[:i], buf[i:]
                    verb = line.strip().upper()
                    if verb == b"STARTTLS":
                        if answer_454:
                            bs.sendall(out)
                            out = b""
                            to_client(reply_454.encode() + b"\r\n")
                            ev("starttls_intercepted", conn=seq)
                            continue
                        out += line
                        st["starttls_fwd"] = True
                        st["raw_c2s"] = True   # TLS (or plaintext after 454) follows
                        ev("starttls_forwarded", conn=seq)
                        out += buf
                        buf = b""
                        break
                    if verb == b"DATA":
                        in_data = True   # naive: assumes the 354 comes
                        data_ctx = b"\r\n"
                    out += line
                if out:
                    bs.sendall(out)
        except OSError:
            pass
        finally:
            try:
                bs.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            t.join(30)
            ev("disconnect", conn=seq)
            cs.close()
            bs.close()

    while True:
        s, peer = ls.accept()
        seq = next(conn_seq)
        ev("connect", conn=seq, peer=list(peer))
        threading.Thread(target=proxy, args=(s, seq), daemon=True).start()


def run_child(kind, d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = _dec(json.load(f))
    _log_setup(d)
    {"aio": _run_aio, "raw": _run_raw, "strip": _run_strip}[kind](d, cfg)


# ---------------------------------------------------------------------------
# pytest integration

class SinkLab:
    """Starts sinks in a base directory on fresh 127.1.X.Y addresses and
    stops them all (by PID) at close().  Methods return started sinks."""

    def __init__(self, basedir):
        self.basedir = str(basedir)
        self.started = []
        self._n = itertools.count(1)

    def _dir(self, kind):
        d = os.path.join(self.basedir, "%s-%d" % (kind, next(self._n)))
        os.makedirs(d, exist_ok=True)
        return d

    def _go(self, sink):
        self.started.append(sink)
        sink.start()
        return sink

    def aio(self, addr=None, port=None, **kw):
        return self._go(AioSink(addr or alloc_addr(), port, self._dir("aio"), **kw))

    def raw(self, addr=None, port=None, **kw):
        return self._go(RawSink(addr or alloc_addr(), port, self._dir("raw"), **kw))

    def smtp_sink(self, addr=None, port=None, **kw):
        return self._go(SmtpSink(addr or alloc_addr(), port, self._dir("smtp-sink"), **kw))

    def stripper(self, backend, addr=None, port=None, **kw):
        return self._go(StartTlsStripper(addr or alloc_addr(), backend, port,
                                         self._dir("strip"), **kw))

    def close(self):
        for s in reversed(self.started):
            s.stop()


try:
    import pytest
except ImportError:   # the module is also a plain script
    pytest = None

if pytest is not None:
    @pytest.fixture
    def sink_lab(tmp_path):
        """A SinkLab in tmp_path/lab; every sink is stopped at teardown."""
        lab = SinkLab(tmp_path / "lab")
        try:
            yield lab
        finally:
            lab.close()


# ---------------------------------------------------------------------------
# Script entry

def main(argv):
    if len(argv) == 4 and argv[1] == "run":
        run_child(argv[2], argv[3])
        return 0
    import argparse
    ap = argparse.ArgumentParser(description="Run one lab sink in the foreground.")
    ap.add_argument("kind", choices=["aio", "raw", "strip", "smtp-sink"])
    ap.add_argument("--listen", required=True, help="ADDR:PORT")
    ap.add_argument("--dir", help="record directory (default: a new /tmp dir)")
    ap.add_argument("--backend", help="ADDR:PORT (strip)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help='a knob, e.g. --set max_rcpts=100 --set tls=\'["c.pem","k.pem"]\'')
    a = ap.parse_args(argv[1:])
    addr, port = a.listen.rsplit(":", 1)
    opts = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        try:
            opts[k] = json.loads(v)
        except ValueError:
            opts[k] = v
    cls = {"aio": AioSink, "raw": RawSink, "smtp-sink": SmtpSink}.get(a.kind)
    if a.kind == "strip":
        bh, bp = a.backend.rsplit(":", 1)
        s = StartTlsStripper(addr, (bh, int(bp)), int(port), a.dir, **opts)
    else:
        s = cls(addr, int(port), a.dir, **opts)
    s.start()
    print("%s sink on %s, records in %s (Ctrl-C stops)" % (a.kind, s.endpoint, s.dir))
    try:
        while s.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
