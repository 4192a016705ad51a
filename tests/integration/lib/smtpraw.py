"""A raw SMTP client for framing tests: exact bytes out, replies parsed in.

smtplib hides framing (it dot-stuffs, normalises line ends, refuses bare
LF), so the smuggling, injection and hostile-input tests drive the socket
directly with this.
"""
import re
import select
import socket
import ssl

QID_RE = re.compile(r"queued as ([0-9A-Z]{16})\b")


class Reply:
    """One (possibly multi-line) SMTP reply."""

    def __init__(self, lines):
        self.lines = lines  # str, without CRLF
        self.code = int(lines[-1][:3])

    @property
    def text(self):
        return "\n".join(line[4:] for line in self.lines)

    @property
    def dsn(self):
        """The enhanced status code of the first line, or None."""
        m = re.match(r"\d\.\d{1,3}\.\d{1,3}\b", self.lines[0][4:])
        return m.group(0) if m else None

    @property
    def qid(self):
        m = QID_RE.search(self.lines[-1])
        return m.group(1) if m else None

    def __repr__(self):
        return "Reply(%r)" % ("\\n".join(self.lines),)


def data_bytes(content):
    """DATA payload for content (bytes with CRLF lines): dot-stuffed and
    terminated with <CRLF>.<CRLF>."""
    if isinstance(content, str):
        content = content.encode()
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    lines = content.split(b"\r\n")
    out = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)
    return out + b".\r\n"


class RawSMTP:
    def __init__(self, host, port, source=None, timeout=10.0):
        self.host = host
        self.sock = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source, 0) if source else None)
        self.buf = b""
        self.eof = False
        self.timeout = timeout

    # -- low level ---------------------------------------------------------
    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self):
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
        if not data:
            self.eof = True
            raise EOFError("server closed the connection; unread=%r" % self.buf)
        self.buf += data

    def read_line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("latin-1")

    def reply(self):
        lines = []
        while True:
            line = self.read_line()
            if not re.match(r"^\d{3}[ -]", line + " "):
                raise AssertionError("malformed reply line %r" % line)
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return Reply(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def pending(self, wait=0.5):
        """Bytes the server sent that nobody asked for, waiting up to wait s
        for them.  Returns b"" if none; sets self.eof if the peer closed."""
        data = self.buf
        self.buf = b""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            data += self.sock.recv(65536)
        r, _, _ = select.select([self.sock], [], [], wait)
        if r:
            try:
                more = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError, OSError):
                more = b""
            if not more:
                self.eof = True
            data += more
        return data

    def wait_closed(self, timeout=5.0):
        """True if the server closes the connection within timeout (any
        remaining bytes are kept in self.buf)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    d = self.sock.recv(65536)
                except (ConnectionResetError, ssl.SSLError):
                    d = b""
                if not d:
                    self.eof = True
                    return True
                self.buf += d
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    # -- SMTP --------------------------------------------------------------
    def greeting(self):
        return self.reply()

    def ehlo(self, name="client.test"):
        return self.cmd("EHLO " + name)

    def starttls(self, server_hostname=None):
        r = self.cmd("STARTTLS")
        if r.code != 220:
            return r
        assert self.buf == b"", "bytes after the 220: %r" % self.buf
        ctx = unverified_context()
        self.sock = ctx.wrap_socket(self.sock,
                                    server_hostname=server_hostname)
        return r

    def send_message(self, mail_from, rcpts, content):
        """MAIL/RCPT/DATA one message; returns the reply to the final dot
        (or the first failing reply)."""
        r = self.cmd("MAIL FROM:<%s>" % mail_from)
        if r.code != 250:
            return r
        ok = 0
        for rc in rcpts:
            r = self.cmd("RCPT TO:<%s>" % rc)
            ok += r.code == 250
        if not ok:
            return r
        r = self.cmd("DATA")
        if r.code != 354:
            return r
        self.send(data_bytes(content))
        return self.reply()

    def quit(self, wait=2.0):
        """QUIT; waits up to wait s for the server's close (self.eof says
        whether it came), then closes our side."""
        try:
            r = self.cmd("QUIT")
            if r.code == 221:
                self.wait_closed(wait)
        except (EOFError, OSError):
            r = None
        self.close()
        return r

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def unverified_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
