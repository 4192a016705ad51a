"""Exim and OpenSMTPD as benchmark peers (issue 15, item 1).

Debian installs one MTA package at a time and Postfix stays installed, so
the peers are not installed: their .debs are fetched with `apt-get download`
into a cache (build-bench/peers/debs by default), unpacked with `dpkg-deb -x`
into a private root (build-bench/peers/root) and run from there, each with
its own config, spool, addresses and logs under the benchmark's temp dir.
Their library dependencies are ordinary Debian libraries installed normally
(PEER_LIBS; the Makefile's `bench` target installs them).

  Exim 4 (exim4-daemon-light)   127.0.200.21, `exim4 -C CONF -bdf -oP PID`.
      Exim gives up root for a -C file not in its TRUSTED_CONFIG_LIST, so
      the daemon runs as Debian-exim (created here with useradd --system
      when missing, as the package's postinst would) and its spool and log
      directories belong to that user.  Accept: `queue_only` and no -q
      (no queue runner: accepted mail stays in the spool).  Relay: no
      queue_only and smtp_accept_queue_per_connection = 0 (default 10, which
      leaves the 11th and later messages of a connection to a queue runner),
      so each message gets its own immediate delivery process, routed by
      manualroute to the sink.
  OpenSMTPD (opensmtpd)         127.0.200.22, `smtpd -d -f CONF`.
      Its spool (/var/spool/smtpd), chroot (/var/lib/opensmtpd/empty) and
      control socket (/var/run/smtpd.sock) are compiled in, so it runs in a
      private mount namespace (`unshare -m`) where the bench's own
      directories are bind-mounted over /var/spool, /var/lib and /run: the
      host's directories are never written.  Users opensmtpd and opensmtpq
      are created with useradd --system when missing.  Accept: started with
      `-P mta` (the MTA, its outbound side, paused: mail stays queued).
      Relay: `relay host smtp://sink`.  smtpctl runs in the same namespace
      (nsenter -m -t PID).

Durability before 250, as each does by default:
  Exim fsync()s the -D (body) file, the -H (header/envelope) file and the
  input directory after renaming -H into place, then answers 250 (seen with
  strace: fsync(-D), fsync(hdr.*), rename, fsync(input/), write "250 OK").
  OpenSMTPD's default fs queue does not sync before 250: the envelope is
  written without fsync (queue_fs.c: envelope_create -> envelope_dump with
  do_sync = 0) and the message is committed by rename() alone; only envelope
  updates are fsynced.  There is no option to make it sync.  Its accept
  numbers are therefore not durable-equivalent to mtad's, Postfix's or
  Exim's: the table marks it.

Known limits of the peers under smtp-source's burst of connections:
  OpenSMTPD listens with a backlog of 5 (compiled in; `ss -ltn` shows
  Send-Q 5): with 10 or 50 sessions connecting at once the accept queue
  overflows (TcpExtListenOverflows grows), the dropped SYNs are resent after
  1 s, 3 s, ..., and its msgs/s are mostly those waits.  No option changes
  it.  Exim 4.96 holds its 221 reply to QUIT for 200 ms, waiting for the
  client to close first (strace: read "QUIT", poll(fd, POLLIN, 200), then
  write "221"); smtp-source waits for the 221, so with one connection per
  message each session manages at most 5 messages/s.  With --reuse
  (smtp-source -d) that costs once per session: 10 sessions x 200 messages
  took 0.74 s (269/s) against 26-34/s without.  Exim also forks a process
  per connection and another per delivery (relay), and fsyncs three times
  per message.  Exim's smtp_accept_max (20) and
  smtp_connect_backlog (20) are raised to 1000 / 1024 so that 50 sessions
  are not refused, as Postfix's default_process_limit is raised to 200.
"""

import os
import re
import shutil
import subprocess
import time

from benchnet import free_port, wait_greeting

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

ADDR_EXIM = "127.0.200.21"
ADDR_OPENSMTPD = "127.0.200.22"
ADDR_NOWHERE = "127.0.200.99"

PEER_DEBS = {
    "exim": ["exim4-daemon-light", "exim4-base", "exim4-config"],
    "opensmtpd": ["opensmtpd"],
}
# Their shared-library dependencies (dpkg-deb -f X.deb Depends), installed
# normally by the Makefile's bench target.
PEER_LIBS = ["libc6", "libcrypt1", "libdb5.3", "libgnutls-dane0", "libgnutls30",
             "libidn12", "libidn2-0", "libnsl2", "libpcre2-8-0", "libevent-2.1-7",
             "libpam0g", "libssl3", "zlib1g"]
PEER_USERS = {"exim": ["Debian-exim"], "opensmtpd": ["opensmtpd", "opensmtpq"]}
PEER_BINARIES = {"exim": "usr/sbin/exim4", "opensmtpd": "usr/sbin/smtpd"}


def _sh(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, **kw)


def _ensure_user(name):
    if _sh(["id", "-u", name]).returncode == 0:
        return
    r = _sh(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name])
    if r.returncode != 0:
        raise RuntimeError("useradd %s: %s" % (name, r.stderr.strip()))


def unpack(peer, cache):
    """Downloads and unpacks PEER's .debs into CACHE (once); returns
    (root dir, {package: version}).  Raises RuntimeError with the reason."""
    debs = os.path.join(cache, "debs")
    root = os.path.join(cache, "root")
    os.makedirs(debs, exist_ok=True)
    os.chmod(cache, 0o755)
    versions = {}
    for pkg in PEER_DEBS[peer]:
        have = [f for f in os.listdir(debs) if f.startswith(pkg + "_") and f.endswith(".deb")]
        if not have:
            r = _sh(["apt-get", "download", pkg], cwd=debs)
            if r.returncode != 0:
                raise RuntimeError("apt-get download %s: %s" % (pkg, r.stderr.strip()[-300:]))
            have = [f for f in os.listdir(debs)
                    if f.startswith(pkg + "_") and f.endswith(".deb")]
        deb = os.path.join(debs, sorted(have)[-1])
        stamp = os.path.join(root, ".unpacked-" + os.path.basename(deb))
        if not os.path.exists(stamp):
            r = _sh(["dpkg-deb", "-x", deb, root])
            if r.returncode != 0:
                raise RuntimeError("dpkg-deb -x %s: %s" % (deb, r.stderr.strip()))
            open(stamp, "w").close()
        versions[pkg] = _sh(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()
    os.chmod(root, 0o755)
    binary = os.path.join(root, PEER_BINARIES[peer])
    missing = re.findall(r"(\S+) => not found", _sh(["ldd", binary]).stdout)
    if missing:
        raise RuntimeError("%s needs %s (install with tests/install_deps.sh %s)" % (
            PEER_BINARIES[peer], ", ".join(missing), " ".join(PEER_LIBS)))
    for u in PEER_USERS[peer]:
        _ensure_user(u)
    if peer == "opensmtpd":
        # smtpctl talks to the control socket only when setgid opensmtpq
        # (the package's file mode; dpkg-deb -x does not keep the group)
        ctl = os.path.join(root, "usr/sbin/smtpctl")
        shutil.chown(ctl, group="opensmtpq")
        os.chmod(ctl, 0o2555)
    return root, versions


def _count_files(top, pred):
    n = 0
    for _dp, _dn, fn in os.walk(top):
        n += sum(1 for f in fn if pred(f))
    return n


# --------------------------------------------------------------------------

class Exim:
    """A private Exim daemon (see the module comment).  mode "hold":
    queue_only, no queue runner; "relay": immediate delivery to RELAYHOST
    ("addr:port")."""

    label = "exim"

    def __init__(self, bench, name, mode, root, relayhost=None):
        self.b = bench
        self.name = name
        self.mode = mode
        self.exim = os.path.join(root, PEER_BINARIES["exim"])
        self.addr = ADDR_EXIM
        self.port = free_port(self.addr)
        self.dir = os.path.join(bench.tmp, name)
        self.spool = os.path.join(self.dir, "spool")
        self.logdir = os.path.join(self.dir, "log")
        for d in (self.dir, self.spool, self.logdir):
            os.makedirs(d, exist_ok=True)
        for d in (self.spool, self.logdir):
            shutil.chown(d, "Debian-exim", "Debian-exim")
        host, _, port = (relayhost or "%s:9" % ADDR_NOWHERE).rpartition(":")
        self.conf = os.path.join(self.dir, "exim.conf")
        self.config = "\n".join([
            "# mtad bench: exim4 -C exim.conf -bdf -oP exim.pid (%s; no -q: no queue "
            "runner)" % ("queue_only: accepted mail stays queued" if mode == "hold"
                         else "immediate delivery to the sink"),
            "primary_hostname = bench.exim.test",
            "spool_directory = %s" % self.spool,
            "log_file_path = %s/%%slog" % self.logdir,
            "keep_environment =",
            "local_interfaces = <; %s.%d" % (self.addr, self.port),
            "daemon_smtp_ports = %d" % self.port,
            # defaults are 20 and 20: smtp-source opens up to 50 sessions
            "smtp_accept_max = 1000",
            "smtp_connect_backlog = 1024",
            # no DNS / ident lookups on loopback clients, no STARTTLS offer
            # (smtp-source does not use it; neither is Postfix's smtpd
            # configured with TLS here)
            "host_lookup =",
            "rfc1413_hosts =",
            "tls_advertise_hosts =",
            "acl_smtp_rcpt = acl_rcpt",
        ] + (["queue_only = true"] if mode == "hold" else [
            # default 10: from the 11th message of one connection on, Exim
            # only queues, for a queue runner; there is none here
            "smtp_accept_queue_per_connection = 0"]) + [
            "",
            "begin acl",
            "acl_rcpt:",
            "  accept hosts = 127.0.0.0/8",
            "  deny",
            "",
            "begin routers",
            "smarthost:",
            "  driver = manualroute",
            "  route_list = * %s" % host,
            "  transport = remote_smtp",
            "  no_more",
            "",
            "begin transports",
            "remote_smtp:",
            "  driver = smtp",
            "  port = %s" % port,
            "",
            "begin retry",
            "* * F,2h,1m",
        ]) + "\n"
        with open(self.conf, "w") as f:
            f.write(self.config)
        self.proc = None

    def version(self):
        out = _sh([self.exim, "-C", self.conf, "-bV"]).stdout
        return out.splitlines()[0].strip() if out else "?"

    def start(self, timeout=30):
        # Exim re-executes itself as /usr/sbin/exim4 (compiled in) for
        # deliveries and to remove its PID file: in a private mount
        # namespace the unpacked usr/sbin is bind-mounted over /usr/sbin.
        inner = ("mount --bind {sbin} /usr/sbin && exec /usr/sbin/exim4 -C {conf} -bdf "
                 "-oP {pid}").format(sbin=os.path.dirname(self.exim), conf=self.conf,
                                     pid=os.path.join(self.dir, "exim.pid"))
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", inner]
        self.proc = self.b.procs.start(self.name, argv,
                                       stderr=os.path.join(self.dir, "stderr"))
        if wait_greeting(self.addr, self.port, timeout, self.proc) is None:
            self.stop()
            raise RuntimeError("exim did not start; see %s" % self.logdir)

    def stop(self):
        self.b.procs.stop(self.name)
        self.proc = None

    def clear(self):
        """Deletes every queued message (no queue runner or delivery is
        active when this is called)."""
        for sub in ("input", "msglog"):
            d = os.path.join(self.spool, sub)
            if os.path.isdir(d):
                for f in os.listdir(d):
                    p = os.path.join(d, f)
                    if os.path.isdir(p):
                        shutil.rmtree(p)
                    else:
                        os.unlink(p)

    def count(self):
        """Messages in the spool: -H files in input/."""
        return _count_files(os.path.join(self.spool, "input"), lambda f: f.endswith("-H"))


class OpenSMTPD:
    """A private OpenSMTPD in its own mount namespace (see the module
    comment).  mode "hold": the MTA paused from start (-P mta); "relay":
    relay host smtp://RELAYHOST."""

    label = "opensmtpd"

    def __init__(self, bench, name, mode, root, relayhost=None):
        self.b = bench
        self.name = name
        self.mode = mode
        self.smtpd = os.path.join(root, PEER_BINARIES["opensmtpd"])
        self.smtpctl = os.path.join(root, "usr/sbin/smtpctl")
        self.addr = ADDR_OPENSMTPD
        self.port = free_port(self.addr)
        self.dir = os.path.join(bench.tmp, name)
        self.var_spool = os.path.join(self.dir, "var-spool")   # -> /var/spool
        self.var_lib = os.path.join(self.dir, "var-lib")       # -> /var/lib
        self.run = os.path.join(self.dir, "run")               # -> /run
        for d in (self.dir, self.var_spool, self.run,
                  os.path.join(self.var_lib, "opensmtpd", "empty")):
            os.makedirs(d, exist_ok=True)
        # smtpd checks every client's FCrDNS (a PTR and an A query per
        # session).  The host's resolver is not on loopback: in the
        # namespace /etc/resolv.conf is this file, which sends libasr to
        # /etc/hosts only ("lookup file"; 127.0.0.1 is localhost there).
        self.resolv = os.path.join(self.dir, "resolv.conf")
        with open(self.resolv, "w") as f:
            f.write("nameserver 127.0.0.1\nlookup file\n")
        self.queue = os.path.join(self.var_spool, "smtpd")
        self.conf = os.path.join(self.dir, "smtpd.conf")
        self.config = "\n".join([
            "# mtad bench: smtpd -d %s-f smtpd.conf" % ("-P mta (MTA paused: accepted "
                                                      "mail stays queued) " if mode == "hold"
                                                      else ""),
            "listen on %s port %d hostname bench.opensmtpd.test" % (self.addr, self.port),
            "action \"relay\" relay host smtp://%s" % (relayhost or "%s:9" % ADDR_NOWHERE),
            "match from any for any action \"relay\"",
        ]) + "\n"
        with open(self.conf, "w") as f:
            f.write(self.config)
        self.proc = None

    def version(self):
        r = _sh([self.smtpd, "-h"])
        m = re.search(r"OpenSMTPD \S+", r.stdout + r.stderr)
        return m.group(0) if m else "?"

    def start(self, timeout=30):
        inner = ("mount --bind {sp} /var/spool && mount --bind {vl} /var/lib && "
                 "mount --bind {run} /run && mount --bind {resolv} /etc/resolv.conf && "
                 "exec {smtpd} -d {pause}-f {conf}").format(
            sp=self.var_spool, vl=self.var_lib, run=self.run, resolv=self.resolv, smtpd=self.smtpd,
            pause="-P mta " if self.mode == "hold" else "", conf=self.conf)
        # unshare and sh both exec: the PID recorded is smtpd's parent process
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", inner]
        self.proc = self.b.procs.start(self.name, argv,
                                       stderr=os.path.join(self.dir, "smtpd.log"))
        if wait_greeting(self.addr, self.port, timeout, self.proc) is None:
            self.stop()
            raise RuntimeError("opensmtpd did not start; see %s" %
                               os.path.join(self.dir, "smtpd.log"))

    def stop(self):
        self.b.procs.stop(self.name)
        self.proc = None

    def smtpctl_cmd(self, *args):
        return _sh(["nsenter", "-m", "-t", str(self.proc.pid), self.smtpctl] + list(args))

    def clear(self, timeout=120):
        """smtpctl remove all, then waits until the queue is empty."""
        if self.count() == 0:
            return
        r = self.smtpctl_cmd("remove", "all")
        if r.returncode != 0:
            raise RuntimeError("smtpctl remove all: %s %s" % (r.stdout, r.stderr))
        t0 = time.monotonic()
        while self.count() > 0:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("opensmtpd: %d still queued %ds after remove all" % (
                    self.count(), timeout))
            time.sleep(0.05)

    def count(self):
        """Messages committed to the queue or still incoming."""
        n = _count_files(os.path.join(self.queue, "queue"), lambda f: f == "message")
        incoming = os.path.join(self.queue, "incoming")
        if os.path.isdir(incoming):
            n += len(os.listdir(incoming))
        return n


PEER_CLASSES = {"exim": Exim, "opensmtpd": OpenSMTPD}
# peers whose 250 does not wait for a sync to disk (module comment)
NO_SYNC = {"opensmtpd"}


def prepare(names, cache):
    """Unpacks each named peer; returns ({name: root}, {name: versions},
    {name: reason skipped})."""
    roots, versions, skipped = {}, {}, {}
    for name in names:
        if name not in PEER_CLASSES:
            skipped[name] = "unknown peer (known: %s)" % ", ".join(PEER_CLASSES)
            continue
        try:
            roots[name], versions[name] = unpack(name, os.path.join(cache, name))
        except (RuntimeError, OSError) as e:
            skipped[name] = str(e)
    return roots, versions, skipped
