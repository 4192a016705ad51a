"""Harness for the integration tests: start the real mtad, read its log,
query its spool with the real mtaq/mtactl."""
import datetime
import email.utils
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time

BUILD_DIR = os.environ.get("MTAD_BUILD_DIR", "/work/main/build")
MTAD = os.path.join(BUILD_DIR, "mtad")
MTAQ = os.path.join(BUILD_DIR, "mtaq")
MTACTL = os.path.join(BUILD_DIR, "mtactl")
HOSTNAME = "mtad.test"
READY_TIMEOUT = 10.0

# ---------------------------------------------------------------------------
# Loopback addresses: every mtad gets its own 127.0.X.Y.  X mixes in the
# pytest process id (and the xdist worker, if any) so two runs side by side
# do not collide; Y counts up.
_counter = itertools.count()


def _worker_index():
    w = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(w[2:]) if w.startswith("gw") else 0


def alloc_addr():
    n = next(_counter)
    base = 16 + ((os.getpid() + 7 * _worker_index()) % 59) * 4
    return "127.0.%d.%d" % (base + (n // 250) % 4, 2 + n % 250)


def free_port(addr):
    s = socket.socket()
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------
# logfmt
_PAIR = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def _unescape(v):
    if v.startswith('"') and v.endswith('"') and len(v) >= 2:
        v = v[1:-1]
        v = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), v)
        v = (v.replace('\\"', '"').replace("\\n", "\n").replace("\\r", "\r")
             .replace("\\t", "\t").replace("\\\\", "\\"))
    return v


def parse_logfmt(line):
    return {k: _unescape(v) for k, v in _PAIR.findall(line)}


def parse_size(s):
    s = str(s).strip()
    m = re.fullmatch(r"(\d+)\s*([kKmMgG]?)[bB]?", s)
    assert m, "not a size: %r" % s
    mult = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2).lower()]
    return int(m.group(1)) * mult


def parse_duration(s):
    s = str(s).strip()
    m = re.fullmatch(r"(\d+)\s*([smhd]?)", s)
    assert m, "not a duration: %r" % s
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_ini(text):
    """{section: {key: value}} from --check-config output."""
    out, sect = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[([^\]]+)\]", line)
        if m:
            sect = out.setdefault(m.group(1).strip(), {})
            continue
        if "=" in line and sect is not None:
            k, v = line.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            sect[k.strip()] = v
    return out


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTAD_")}
    env.update(extra or {})
    return env


def write_config(path, settings):
    """settings: {"section.key": value}; None values are left out."""
    sections = {}
    for dotted, value in settings.items():
        if value is None:
            continue
        sect, key = dotted.split(".", 1)
        sections.setdefault(sect, []).append((key, value))
    with open(path, "w") as f:
        for sect, pairs in sections.items():
            f.write("[%s]\n" % sect)
            for k, v in pairs:
                f.write("%s = %s\n" % (k, v))
            f.write("\n")


# ---------------------------------------------------------------------------
# The daemon user.  mtad started as root drops to server.user (default
# `mtad`); the tests run as root, so that user must exist.
DAEMON_USER = "mtad"


def ensure_daemon_user():
    """True when the user was created here (remove it at the end)."""
    import pwd
    if os.geteuid() != 0:
        return False
    try:
        pwd.getpwnam(DAEMON_USER)
        return False
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", DAEMON_USER], check=True)
    return True


def give_group_read(path):
    """A file mtad reads again as the dropped user (auth.users_file):
    0640 root:mtad, as docs/security.md asks of operators."""
    import grp
    if os.geteuid() == 0:
        os.chown(path, 0, grp.getgrnam(DAEMON_USER).gr_gid)
    os.chmod(path, 0o640)


def remove_daemon_user():
    subprocess.run(["userdel", DAEMON_USER], check=False)


# ---------------------------------------------------------------------------
class Mtad:
    """One mtad process with its own address, port, spool, log."""

    def __init__(self, workdir, settings=None, env=None, tls=None):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        # the daemon, once it dropped root, reaches its spool through here
        os.chmod(workdir, 0o711)
        self.addr = alloc_addr()
        self.port = free_port(self.addr)
        self.http_port = free_port(self.addr)
        self.conf = os.path.join(workdir, "mtad.conf")
        self.logpath = os.path.join(workdir, "mtad.log")
        self.pidfile = os.path.join(workdir, "mtad.pid")
        self.spool = os.path.join(workdir, "spool")
        self.env = env or {}
        self.proc = None
        self.log_offset = 0
        self.exit_codes = []
        self.settings = {
            "server.hostname": HOSTNAME,
            "server.listen": "%s:%d" % (self.addr, self.port),
            "spool.dir": self.spool,
            "control.socket": os.path.join(workdir, "ctl.sock"),
            "http.listen": "%s:%d" % (self.addr, self.http_port),
            # Keep accepted mail in the spool: the only next hop is a closed
            # port on our own address.
            "delivery.relayhost": "%s:%d" % (self.addr, free_port(self.addr)),
            "log.level": "info",
        }
        if tls:
            self.settings["server.tls_cert"] = tls[0]
            self.settings["server.tls_key"] = tls[1]
        self.settings.update(settings or {})
        write_config(self.conf, self.settings)

    # -- process -----------------------------------------------------------
    def start(self, wait_ready=True):
        assert self.proc is None or self.proc.poll() is not None
        self.log_offset = os.path.getsize(self.logpath) if os.path.exists(self.logpath) else 0
        logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen([MTAD, "-c", self.conf],
                                     stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=logf,
                                     env=clean_env(self.env))
        logf.close()
        with open(self.pidfile, "w") as f:
            f.write("%d\n" % self.proc.pid)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("event") == "ready" for e in self.events(since_start=True)):
                return
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError("mtad exited with %d before event=ready; log:\n%s"
                                     % (rc, self.log_tail()))
            time.sleep(0.05)
        raise AssertionError("no event=ready within %ss; log:\n%s" % (timeout, self.log_tail()))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        assert self.alive(), "mtad is not running (rc=%r)" % self.proc.poll()
        os.kill(self.proc.pid, sig)

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(10)
        self.exit_codes.append(rc)
        return rc

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after timeout; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        rc = self.proc.returncode
        self.exit_codes.append(rc)
        return rc

    def restart(self):
        self.stop()
        return self.start()

    # -- log ---------------------------------------------------------------
    def log_bytes(self, since_start=False):
        try:
            with open(self.logpath, "rb") as f:
                if since_start:
                    f.seek(self.log_offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def log_text(self, since_start=False):
        return self.log_bytes(since_start).decode("utf-8", "replace")

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def events(self, event=None, since_start=False, **match):
        out = []
        for line in self.log_text(since_start).splitlines():
            e = parse_logfmt(line)
            if event is not None and e.get("event") != event:
                continue
            if all(e.get(k) == str(v) for k, v in match.items()):
                e["_line"] = line
                out.append(e)
        return out

    def wait_event(self, event, timeout=5.0, **match):
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events(event, **match)
            if evs or time.monotonic() > deadline:
                return evs
            time.sleep(0.05)

    # -- spool tools -------------------------------------------------------
    def run_tool(self, argv, check=True, timeout=20):
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=clean_env(self.env), timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError("%s exited %d\nstderr: %s" % (
                " ".join(argv), p.returncode, p.stderr.decode("utf-8", "replace")))
        return p

    def mtaq(self):
        p = self.run_tool([MTAQ, "-c", self.conf, "--json"])
        try:
            q = json.loads(p.stdout)
        except ValueError as e:
            raise AssertionError("mtaq --json printed no JSON (%s): %r" % (e, p.stdout[:500]))
        assert q["count"] == len(q["messages"]), q
        return q

    def queue(self):
        """{qid: message} from mtaq --json."""
        return {m["qid"]: m for m in self.mtaq()["messages"]}

    def cat(self, qid):
        return self.run_tool([MTACTL, "-c", self.conf, "cat", qid]).stdout

    def tlsrpt(self):
        """{(domain, policy type, result type): count} from mtactl tlsrpt."""
        out = self.run_tool([MTACTL, "-c", self.conf, "tlsrpt"]).stdout
        counts = {}
        for line in out.decode().splitlines():
            day, dom, ptype, result, n = line.split()
            counts[(dom, ptype, result)] = counts.get((dom, ptype, result), 0) + int(n)
        return counts

    def check_config(self, extra_env=None):
        env = dict(self.env)
        env.update(extra_env or {})
        return subprocess.run([MTAD, "-c", self.conf, "--check-config"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=clean_env(env), timeout=20)


_SANITIZER = re.compile(r"(ERROR: AddressSanitizer|ERROR: LeakSanitizer|"
                        r"WARNING: ThreadSanitizer|runtime error:)")


def sanitizer_report(log):
    """The first sanitizer report in a log (ASan/LSan/UBSan/TSan), or None."""
    m = _SANITIZER.search(log)
    if not m:
        return None
    return log[max(0, m.start() - 200):m.start() + 3000]


# ---------------------------------------------------------------------------
def split_received(msg):
    """(unfolded Received header, rest) from what mtactl cat printed."""
    assert msg.startswith(b"Received:"), "stored message does not start with Received: %r" % msg[:200]
    end = 0
    while True:
        nl = msg.index(b"\r\n", end)
        end = nl + 2
        if msg[end:end + 1] not in (b" ", b"\t"):
            break
    hdr = msg[:end]
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", hdr[:-2]).decode("utf-8", "replace")
    return unfolded, msg[end:]


RECEIVED_RE = re.compile(
    r"^Received: from (?P<helo>\S+) \(\[(?P<ip>[0-9a-fA-F.:]+)\]\)"
    r".*?\bby (?P<by>\S+)"
    r".*?\bwith (?P<with>E?SMTPS?A?)\b"
    r"(?P<mid>.*?)"
    r"\bid (?P<qid>[0-9A-Z]{16})\b"
    r".*;\s*(?P<date>.+?)\s*$", re.S)


def check_received(hdr, helo, ip, qid):
    m = RECEIVED_RE.match(hdr)
    assert m, "Received header does not match the expected shape: %r" % hdr
    assert m["helo"] == helo, hdr
    assert m["ip"] == ip, hdr
    assert m["by"] == HOSTNAME, hdr
    assert m["qid"] == qid, hdr
    when = email.utils.parsedate_to_datetime(m["date"])
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - when).total_seconds()) < 300, "Received date %r is not now" % m["date"]
    return m


def make_cert(directory, hostname=HOSTNAME):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def message(subject="test", body="hello\r\n", extra=b""):
    """A small CRLF message; bytes."""
    return (b"From: <sender@client.test>\r\nTo: <rcpt@example.org>\r\n"
            b"Subject: " + subject.encode() + b"\r\n" + extra + b"\r\n" + body.encode())
