#!/usr/bin/python3
"""A real HTTPS server for MTA-STS policy hosts (RFC 8461 3.3 tests).

One child process (Debian python3: http.server + ssl) listens on one
loopback address and serves any number of policy hosts mta-sts.<domain>,
chosen by SNI, each with its own certificate from a test CA, and each
scripted per test:

  status        HTTP status (200)
  content_type  Content-Type value, None for no header ("text/plain")
  body          str or bytes (default: a valid enforce policy for the domain)
  pad_to        pad the body with "pad: xxx" extension lines to exactly
                this many bytes
  headers       extra response headers, e.g. {"Location": ...} or
                {"ETag": ..., "Last-Modified": ..., "Cache-Control": ...}
  content_length  send Content-Length (True) or close-delimit the body
  delay         seconds to wait before the status line
  trickle       seconds between body bytes (one byte per write)
  hang          accept TLS, then never answer
  close_notify  end the connection with a TLS close_notify (True); False
                just closes the socket, so a close-delimited body looks
                truncated

Certificates (cert= in add_host): "ok" (lab CA, SAN mta-sts.<domain>),
"expired", "notyet", "self" (self-signed), "untrusted" (another CA),
"wrong" (SAN other.test only), "cn" (CN only, no SAN), "noint" (issued by
an intermediate that the server does not send), "wild" (SAN *.<domain>),
"pwild" (SAN mta-*.<domain>, a partial-label wildcard).
The lab CA is lab.ca_file.

Every TLS connection and request is logged to DIR/events.jsonl: event
"tls" (sni, peer), "tls_error", and "request" with sni, host, method,
path, all request headers, and the conditional-request headers
if_modified_since / if_none_match pulled out (STS-44).

The script can be changed while the server runs (lab.set(domain, ...)):
the child rereads DIR/hosts.json on every handshake and request.

Use only /usr/bin/python3 with python3-cryptography.  stop() signals only
the child's PID; the child also dies with its parent (PDEATHSIG).
"""
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THIS = os.path.abspath(__file__)
PYTHON = "/usr/bin/python3"

sys.path.insert(0, HERE)


def policy_body(domain, mode="enforce", max_age=604800, mx=None, crlf=True):
    """A policy body for domain (P0 of conformance.md by default)."""
    eol = "\r\n" if crlf else "\n"
    mx = mx if mx is not None else ["mx1." + domain, "mx2." + domain]
    lines = ["version: STSv1", "mode: " + mode]
    lines += ["mx: " + m for m in mx]
    lines.append("max_age: %d" % max_age)
    return eol.join(lines) + eol


def _write_json_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.rename(tmp, path)


class HttpsLab:
    """Parent side.  lab = HttpsLab(addr, workdir=...); lab.add_host(
    "m.u.test"); lab.start(); ...; lab.requests("m.u.test"); lab.stop()."""

    CERT_KINDS = ("ok", "expired", "notyet", "self", "untrusted", "wrong",
                  "cn", "noint", "wild", "pwild")

    def __init__(self, addr, port=None, workdir=None):
        import sinks
        self._sinks = sinks
        self.addr = addr
        self.port = port or sinks.free_port(addr)
        self._own_dir = workdir is None
        self.dir = str(workdir) if workdir else tempfile.mkdtemp(
            prefix="mtlab-https-", dir="/tmp")
        os.makedirs(self.dir, exist_ok=True)
        # mtad (after dropping root) reads ca.pem (its tls.ca_file) at
        # each fetch: the directory is searchable, the CA file 0644
        os.chmod(self.dir, 0o711)
        self.ca = sinks.make_ca("STS Lab Root CA")
        self.ca_file = self.ca.write_ca(os.path.join(self.dir, "ca.pem"))
        self._int = None
        self._other_ca = None
        self.hosts = {}
        self.proc = None
        default = sinks.issue(self.ca, ["default.invalid"])
        self.default_cert = default.write(self.dir, "default")

    # -- set-up
    def _cert(self, name, domain, kind):
        s = self._sinks
        if kind == "ok":
            ck = s.issue(self.ca, [name])
        elif kind == "expired":
            ck = s.issue(self.ca, [name], not_before=-30, not_after=-1)
        elif kind == "notyet":
            ck = s.issue(self.ca, [name], not_before=10, not_after=40)
        elif kind == "self":
            ck = s.self_signed([name])
        elif kind == "untrusted":
            if self._other_ca is None:
                self._other_ca = s.make_ca("Other CA")
            ck = s.issue(self._other_ca, [name])
        elif kind == "wrong":
            ck = s.issue(self.ca, ["other.test"])
        elif kind == "cn":
            ck = s.issue(self.ca, [name], cn=name, san=False)
        elif kind == "noint":
            if self._int is None:
                self._int = s.make_ca("STS Lab Intermediate", issuer=self.ca)
            ck = s.issue(self._int, [name])
            return ck.write(self.dir, "%s-%s" % (name, kind), chain=False)
        elif kind == "wild":
            ck = s.issue(self.ca, ["*." + domain])
        elif kind == "pwild":
            ck = s.issue(self.ca, ["mta-*." + domain])
        else:
            raise ValueError("cert kind %r not in %r" % (kind, self.CERT_KINDS))
        return ck.write(self.dir, "%s-%s" % (name, kind), chain=True)

    def add_host(self, domain, cert="ok", **script):
        """Serve mta-sts.<domain> with a certificate of the given kind."""
        name = "mta-sts." + domain
        certfile, keyfile = self._cert(name, domain, cert)
        sc = {"status": 200, "content_type": "text/plain",
              "body": policy_body(domain), "headers": {},
              "content_length": True, "delay": 0, "trickle": 0,
              "hang": False, "pad_to": None, "close_notify": True}
        sc.update(script)
        self.hosts[name] = {"cert": certfile, "key": keyfile, "script": sc}
        self._save()
        return name

    def set(self, domain, **script):
        """Change the script of a host (takes effect on the next request)."""
        self.hosts["mta-sts." + domain]["script"].update(script)
        self._save()

    def _save(self):
        hosts = {}
        for name, h in self.hosts.items():
            sc = dict(h["script"])
            body = sc["body"]
            if isinstance(body, str):
                body = body.encode()
            sc["body_hex"] = body.hex()
            del sc["body"]
            hosts[name] = {"cert": h["cert"], "key": h["key"], "script": sc}
        _write_json_atomic(os.path.join(self.dir, "hosts.json"),
                           {"hosts": hosts, "default": list(self.default_cert)})

    # -- lifecycle
    def start(self, timeout=10.0):
        self._save()
        _write_json_atomic(os.path.join(self.dir, "config.json"),
                           {"addr": self.addr, "port": self.port})
        err = open(os.path.join(self.dir, "stderr.log"), "ab")
        try:
            self.proc = subprocess.Popen(
                [PYTHON, THIS, "run", self.dir], stdin=subprocess.DEVNULL,
                stdout=err, stderr=err, cwd=self.dir,
                preexec_fn=_die_with_parent)
        finally:
            err.close()
        deadline = time.monotonic() + timeout
        while not self._sinks.is_listening(self.addr, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError("httpslab exited (rc %s):\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("httpslab not listening on %s:%d"
                                   % (self.addr, self.port))
            time.sleep(0.02)
        return self

    def stop(self, timeout=5.0):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def log_tail(self, n=40):
        p = os.path.join(self.dir, "stderr.log")
        if not os.path.exists(p):
            return ""
        with open(p, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])

    # -- records
    def events(self, event=None, **match):
        out = []
        try:
            with open(os.path.join(self.dir, "events.jsonl")) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except FileNotFoundError:
            pass
        return [e for e in out if (event is None or e["event"] == event)
                and all(e.get(k) == v for k, v in match.items())]

    def requests(self, domain=None):
        if domain is None:
            return self.events("request")
        return self.events("request", host="mta-sts." + domain)


def _die_with_parent():
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


# ---------------------------------------------------------------------------
# Child side

def _run(d):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    log_lock = threading.Lock()
    log_f = open(os.path.join(d, "events.jsonl"), "a")

    def ev(event, **kw):
        kw["event"] = event
        kw["t"] = round(time.time(), 4)
        with log_lock:
            log_f.write(json.dumps(kw, sort_keys=True) + "\n")
            log_f.flush()

    def hosts():
        with open(os.path.join(d, "hosts.json")) as f:
            return json.load(f)

    ctx_cache = {}
    ctx_lock = threading.Lock()

    def ctx_for(cert, key):
        with ctx_lock:
            c = ctx_cache.get((cert, key))
            if c is None:
                c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                c.load_cert_chain(cert, key)
                c.sni_callback = on_sni
                ctx_cache[(cert, key)] = c
            return c

    def on_sni(sslobj, server_name, _ctx):
        sslobj.lab_sni = server_name
        h = hosts()["hosts"].get((server_name or "").lower())
        if h is not None:
            sslobj.context = ctx_for(h["cert"], h["key"])
        return None

    default = hosts()["default"]
    base_ctx = ctx_for(default[0], default[1])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            self.tls_ok = False
            raw = self.request
            raw.settimeout(30)
            try:
                raw.do_handshake()
            except (ssl.SSLError, OSError) as e:
                ev("tls_error", peer=list(self.client_address), error=str(e),
                   sni=getattr(raw, "lab_sni", None))
                self.rfile = self.wfile = None
                return
            self.tls_ok = True
            ev("tls", peer=list(self.client_address),
               sni=getattr(raw, "lab_sni", None), version=raw.version())
            super().setup()

        def handle(self):
            if self.tls_ok:
                super().handle()

        def finish(self):
            if not self.tls_ok:
                return
            try:
                super().finish()
                if getattr(self, "close_notify", True):
                    self.request.unwrap()   # TLS close_notify, then EOF
            except (OSError, ValueError):
                pass

        def log_message(self, fmt, *args):
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

        def do_GET(self):
            self._serve()

        def do_HEAD(self):
            self._serve()

        def do_POST(self):
            self._serve()

        def _serve(self):
            host = (self.headers.get("Host") or "").split(":")[0].lower()
            hdrs = {k: v for k, v in self.headers.items()}
            ev("request", sni=getattr(self.request, "lab_sni", None),
               host=host, method=self.command, path=self.path,
               version=self.request_version, headers=hdrs,
               if_modified_since=self.headers.get("If-Modified-Since"),
               if_none_match=self.headers.get("If-None-Match"),
               peer=list(self.client_address))
            h = hosts()["hosts"].get(host)
            if h is None:
                self.send_error(421, "unknown host")
                return
            sc = h["script"]
            self.close_notify = sc.get("close_notify", True)
            if sc.get("hang"):
                time.sleep(600)
                return
            if sc.get("delay"):
                time.sleep(sc["delay"])
            body = bytes.fromhex(sc["body_hex"])
            if sc.get("pad_to"):
                body = _pad(body, sc["pad_to"])
            self.send_response(sc["status"])
            if sc.get("content_type") is not None:
                self.send_header("Content-Type", sc["content_type"])
            for k, v in (sc.get("headers") or {}).items():
                self.send_header(k, v)
            if sc.get("content_length", True):
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if self.command == "HEAD":
                return
            try:
                if sc.get("trickle"):
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(sc["trickle"])
                else:
                    self.wfile.write(body)
            except OSError as e:
                ev("write_error", host=host, error=str(e))

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

        def get_request(self):
            sock, peer = self.socket.accept()
            ev("connect", peer=list(peer))
            tls = base_ctx.wrap_socket(sock, server_side=True,
                                       do_handshake_on_connect=False)
            return tls, peer

    srv = Server((cfg["addr"], cfg["port"]), Handler)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    srv.serve_forever()


def _pad(body, size):
    """Pad body with extension lines "pad: xxx..." to exactly size bytes."""
    out = bytearray(body)
    if out and not out.endswith(b"\n"):
        out += b"\n"
    while len(out) < size:
        room = size - len(out)
        line = 100 if room > 200 else room
        if line < 7:
            raise ValueError("cannot pad to %d" % size)
        out += b"pad: " + b"x" * (line - 6) + b"\n"
    return bytes(out)


def main(argv):
    if len(argv) == 3 and argv[1] == "run":
        _run(argv[2])
        return 0
    sys.stderr.write("usage: httpslab.py run DIR (internal; use HttpsLab)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
