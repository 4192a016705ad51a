#!/usr/bin/python3
"""mtad benchmark suite (issue #6).  `make bench` runs it; see README.md.

    /usr/bin/python3 tests/bench/run.py [--build build-bench] [options]

Parts (--only to pick some, comma separated):
  disk      synchronous small-write rate (fdatasync/s) in the spool's file system
  ceiling   smtp-source -> sink directly (no relay, no disk); the sink is
            tests/bench/sink (threads), or smtp-sink with --sink smtp-sink
  accept    smtp-source -> mtad and -> a private Postfix (hold queue), alternating;
            also -> private Exim and OpenSMTPD instances (--peers, peers.py)
  relay     smtp-source -> relay -> sink until the sink counted everything
            (skipped when mtad does not deliver yet); the same peers
  threads   server.threads = 1 against 2: the accept cells, mtad alone, alternating
  scale     queue scale: spool of --scale-count messages built with spoolfill
  memcg     mtad in a 128 MiB memory cgroup with 1 M queued (memcg.py)
  callgrind instructions per accepted message (valgrind --tool=callgrind)

Every process it starts has a PID file in <tmpdir>/pids and is stopped by that
PID (the private Postfix with `postfix -c DIR stop`).  It never touches the
system Postfix instance.  Results: a table on stdout and
tests/bench/results/<timestamp>.json.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchnet import free_port, wait_greeting  # noqa: E402
import peers
import memcg    # tests/bench/memcg.py: the memcg part

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
POSTSUPER = "/usr/sbin/postsuper"
POSTCONF = "/usr/sbin/postconf"

# Our own loopback addresses (Linux routes all of 127/8 to lo).
ADDR_MTAD = "127.0.200.10"
ADDR_POSTFIX = "127.0.200.20"
ADDR_SINK = "127.0.200.30"
ADDR_MTAD_SCALE = "127.0.200.11"
ADDR_NOWHERE = "127.0.200.99"   # nothing listens: accept-mode relayhost

SENDER = "bench@source.test"
RCPT = "rcpt@dest.test"


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# processes: every one has a PID file, every one is stopped by its PID

class Procs:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "pids")
        os.makedirs(self.dir, exist_ok=True)
        self.live = {}           # name -> Popen
        self.postfix_dirs = []   # config dirs of private Postfix instances started

    def start(self, name, argv, stdout=None, stderr=None, env=None):
        out = open(stdout, "wb") if stdout else subprocess.DEVNULL
        err = open(stderr, "wb") if stderr else subprocess.DEVNULL
        p = subprocess.Popen(argv, stdout=out, stderr=err, env=env,
                             stdin=subprocess.DEVNULL)
        with open(os.path.join(self.dir, name + ".pid"), "w") as f:
            f.write("%d\n" % p.pid)
        self.live[name] = p
        return p

    def stop(self, name, sig=signal.SIGTERM, timeout=30):
        p = self.live.pop(name, None)
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log("%s (pid %d) did not stop in %ds: SIGKILL" % (name, p.pid, timeout))
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        try:
            os.unlink(os.path.join(self.dir, name + ".pid"))
        except FileNotFoundError:
            pass
        return p.returncode

    def stop_all(self):
        for name in list(self.live):
            self.stop(name)
        for d in list(self.postfix_dirs):
            postfix_stop(self, d)


# --------------------------------------------------------------------------
# helpers

def send_one(addr, port, timeout=10):
    import smtplib
    with smtplib.SMTP(addr, port, timeout=timeout) as c:
        c.sendmail(SENDER, [RCPT], b"Subject: probe\r\n\r\nprobe\r\n")


def smtp_source_argv(addr, port, n, size, rcpts, sessions, reuse):
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(n), "-l", str(size),
            "-r", str(rcpts), "-M", "source.test", "-f", SENDER, "-t", RCPT]
    if reuse:
        argv.append("-d")
    return argv + ["inet:%s:%d" % (addr, port)]


def run_source(addr, port, n, size, rcpts, sessions, reuse, timeout=600):
    """Runs smtp-source; returns its wall time in seconds (raises on error)."""
    argv = smtp_source_argv(addr, port, n, size, rcpts, sessions, reuse)
    t0 = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("smtp-source failed (%d): %s" % (
            r.returncode, r.stderr.decode(errors="replace")[-500:]))
    return dt


def median(xs):
    return statistics.median(xs) if xs else None


def read_status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
    except FileNotFoundError:
        pass
    return out


def thread_cpu(pid):
    """{thread name/tid: user+sys CPU seconds} of a running process."""
    out = {}
    tck = os.sysconf("SC_CLK_TCK")
    try:
        for t in sorted(os.listdir("/proc/%d/task" % pid), key=int):
            with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                st = f.read().rsplit(")", 1)[1].split()
            out[t] = round((int(st[11]) + int(st[12])) / tck, 2)
    except (FileNotFoundError, ProcessLookupError):
        pass
    return list(out.values())


def cpu_idle_pct(seconds=0.5):
    """Idle (+ iowait) share of all CPUs over `seconds`, from /proc/stat."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v[:8])     # idle+iowait, total (no guest)
    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return round(100.0 * (i1 - i0) / max(1, t1 - t0), 1)


# A cell is noisy when other work shared the machine with it.  Measured
# while no benchmark process works (just before the cell and just after its
# last run): the 1-minute load average and /proc/stat's idle share over
# 0.5 s.  The rule, with C CPUs:
#   idle before or after < NOISE_IDLE_PCT %       (someone else was busy)
#   load1 before - load1 at the end of the previous cell > NOISE_LOAD_FRAC x C
#       (the load rose while the bench ran nothing: other work started)
# The load average's own level is recorded, not judged: it decays with a
# 60 s time constant, so at the start of a cell it is mostly the previous
# cell's own processes (a first version of this rule, "load1 before >
# 0.5 x C", marked half the cells of an otherwise idle machine).
NOISE_IDLE_PCT = 75.0
NOISE_LOAD_FRAC = 0.25
_last_load_end = [None]


def noise_begin():
    return {"load1_before": round(os.getloadavg()[0], 2),
            "load1_prev_end": _last_load_end[0],
            "idle_before_pct": cpu_idle_pct()}


def noise_end(nz):
    nz["idle_after_pct"] = cpu_idle_pct()
    nz["load1_after"] = round(os.getloadavg()[0], 2)
    _last_load_end[0] = nz["load1_after"]
    ncpu = os.cpu_count() or 1
    why = []
    if min(nz["idle_before_pct"], nz["idle_after_pct"]) < NOISE_IDLE_PCT:
        why.append("idle %.0f%%/%.0f%%" % (nz["idle_before_pct"], nz["idle_after_pct"]))
    prev = nz["load1_prev_end"]
    if prev is not None and nz["load1_before"] - prev > NOISE_LOAD_FRAC * ncpu:
        why.append("load %.2f->%.2f between cells" % (prev, nz["load1_before"]))
    nz["noisy"] = bool(why)
    nz["why"] = why
    return nz


def is_noisy(cell):
    return bool(cell) and cell.get("noise", {}).get("noisy", False)


def drop_file_cache(path):
    """Evicts one file's pages from the page cache (posix_fadvise DONTNEED;
    touches nothing else of the system)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def sh(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, **kw)


# --------------------------------------------------------------------------
# mtad

class Mtad:
    def __init__(self, bench, name, addr, relayhost=None, spool=None,
                 valgrind=None, log_level="info", threads=None):
        self.b = bench
        self.name = name
        self.addr = addr
        self.port = free_port(addr)
        self.dir = os.path.join(bench.tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.spool = spool or os.path.join(self.dir, "spool")
        self.conf = os.path.join(self.dir, "mtad.conf")
        self.valgrind = valgrind
        self.proc = None
        lines = [
            "[server]",
            "hostname = bench.mtad.test",
            "listen = %s:%d" % (addr, self.port),
            "max_sessions = 10000",
        ] + (["threads = %d" % threads] if threads else []) + [
            "[spool]",
            "dir = %s" % self.spool,
            "[delivery]",
            # Accept mode: a relayhost where nothing listens and a long
            # back-off, so that (once delivery exists) each message costs one
            # refused connection at most, like Postfix's hold queue costs
            # nothing.  Relay mode: the smtp-sink.
            "relayhost = %s" % (relayhost or "[%s]:9" % ADDR_NOWHERE),
            "min_backoff = %s" % ("1s" if relayhost else "1d"),
            "max_backoff = %s" % ("10s" if relayhost else "7d"),
            "[http]",
            "listen = %s:%d" % (addr, free_port(addr)),
            "[log]",
            "level = %s" % log_level,
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, fresh=True, timeout=30):
        if fresh and os.path.exists(self.spool):
            shutil.rmtree(self.spool)
        argv = [self.b.mtad, "-c", self.conf]
        if self.valgrind:
            argv = self.valgrind + argv
        t0 = time.monotonic()
        self.proc = self.b.procs.start(self.name, argv,
                                       stderr=os.path.join(self.dir, "mtad.log"))
        dt = wait_greeting(self.addr, self.port, timeout, self.proc)
        if dt is None:
            self.b.procs.stop(self.name)
            raise RuntimeError("%s did not start; see %s" % (
                self.name, os.path.join(self.dir, "mtad.log")))
        return time.monotonic() - t0

    def stop(self, timeout=60):
        rc = self.b.procs.stop(self.name, timeout=timeout)
        self.proc = None
        return rc

    def summary(self):
        t0 = time.monotonic()
        r = sh([self.b.mtaq, "-c", self.conf, "--summary"])
        dt = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError("mtaq --summary failed: %s" % r.stderr)
        m = re.match(r"(\d+) messages", r.stdout)
        return dt, (int(m.group(1)) if m else None), r.stdout.strip()


# --------------------------------------------------------------------------
# the private Postfix instance

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix: own config_directory, queue_directory and
    data_directory under the benchmark's temp dir, smtpd on ADDR_POSTFIX:port
    (master.cf), started and stopped with `postfix -c DIR start/stop`.
    mode "hold": every message goes to the hold queue (acceptance only: the
    normal cleanup fsync before 250, nothing delivered); "defer":
    defer_transports = smtp; "relay": relayhost = the smtp-sink."""

    def __init__(self, bench, name, mode, relayhost=None):
        self.b = bench
        self.name = name
        self.mode = mode
        self.addr = ADDR_POSTFIX
        self.port = free_port(self.addr)
        self.dir = os.path.join(bench.tmp, name)
        self.etc = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        for d in (self.etc, self.queue, self.data):
            os.makedirs(d, exist_ok=True)
        shutil.chown(self.data, "postfix")
        main = [
            "compatibility_level = 3.6",
            "queue_directory = %s" % self.queue,
            "data_directory = %s" % self.data,
            "mail_owner = postfix",
            "setgid_group = postdrop",
            # Postfix checks inet_interfaces against the interface list, which
            # only has 127.0.0.1; the smtpd listener itself is bound to
            # ADDR_POSTFIX:port explicitly in master.cf.
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "myhostname = bench.postfix.test",
            "mydomain = postfix.test",
            "mydestination =",
            "local_recipient_maps =",
            "alias_maps =",
            "alias_database =",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtpd_client_connection_count_limit = 0",
            "default_process_limit = 200",
            "maillog_file = %s" % os.path.join(self.dir, "maillog"),
            "maillog_file_prefixes = %s" % self.dir,
            "relayhost = %s" % (relayhost or "[%s]:9" % ADDR_NOWHERE),
        ]
        if mode == "hold":
            # Straight to the hold queue: qmgr never sees the message.  No
            # qmgr means no in-flow tokens, so in_flow_delay (which would
            # stall cleanup 1 s per message) is off.
            main += ["smtpd_data_restrictions = check_client_access static:HOLD",
                     "in_flow_delay = 0"]
        elif mode == "defer":
            main += ["defer_transports = smtp"]
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write("\n".join(main) + "\n")
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(listen="%s:%d" % (self.addr, self.port)))

    def start(self):
        # config dirs go on the list before start so a failure is cleaned up
        self.b.procs.postfix_dirs.append(self.etc)
        r = sh([POSTFIX, "-c", self.etc, "start"])
        if r.returncode != 0:
            raise RuntimeError("postfix -c %s start failed: %s %s (see %s)" % (
                self.etc, r.stdout, r.stderr, os.path.join(self.dir, "maillog")))
        pid = self.master_pid()
        if pid:
            shutil.copy(os.path.join(self.queue, "pid", "master.pid"),
                        os.path.join(self.b.procs.dir, self.name + "-master.pid"))
        if wait_greeting(self.addr, self.port, 30) is None:
            raise RuntimeError("private postfix does not answer on %s:%d" % (
                self.addr, self.port))

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def stop(self):
        postfix_stop(self.b.procs, self.etc)

    def clear(self):
        """Deletes every queued message (postsuper -d ALL)."""
        r = sh([POSTSUPER, "-c", self.etc, "-d", "ALL"])
        if r.returncode != 0:
            raise RuntimeError("postsuper -d ALL failed: %s" % r.stderr)

    def count(self, queues=("incoming", "active", "deferred", "hold", "maildrop")):
        n = 0
        for q in queues:
            for _dp, _dn, fn in os.walk(os.path.join(self.queue, q)):
                n += len(fn)
        return n


def postfix_stop(procs, etc):
    """postfix -c ETC stop, then waits for that instance's master PID."""
    if etc in procs.postfix_dirs:
        procs.postfix_dirs.remove(etc)
    qdir = None
    try:
        with open(os.path.join(etc, "main.cf")) as f:
            for line in f:
                if line.startswith("queue_directory = "):
                    qdir = line.split("=", 1)[1].strip()
    except FileNotFoundError:
        return
    pid = None
    if qdir:
        try:
            with open(os.path.join(qdir, "pid", "master.pid")) as f:
                pid = int(f.read().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            pid = None
    sh([POSTFIX, "-c", etc, "stop"])
    if pid:
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            if os.path.exists("/proc/%d/stat" % pid):
                with open("/proc/%d/stat" % pid) as f:
                    if f.read().split(") ", 1)[1].startswith("Z"):
                        break
            time.sleep(0.1)
    for f in os.listdir(procs.dir):
        if f.endswith("-master.pid") and pid is not None:
            try:
                with open(os.path.join(procs.dir, f)) as fh:
                    if int(fh.read().split()[0]) == pid:
                        os.unlink(os.path.join(procs.dir, f))
            except (OSError, ValueError, IndexError):
                pass


# --------------------------------------------------------------------------
# the receiving sinks: tests/bench/sink (default) or Postfix's smtp-sink

class _SinkBase:
    """What both sinks have: a name, an address, a free port, a directory."""

    def __init__(self, bench, name, addr=ADDR_SINK):
        self.b = bench
        self.name = name
        self.addr = addr
        self.port = free_port(addr)
        self.dir = os.path.join(bench.tmp, name)
        os.makedirs(self.dir, exist_ok=True)


class FastSink(_SinkBase):
    """tests/bench/sink: one SO_REUSEPORT listener and epoll loop per thread
    (default: one per CPU), discards data, counts messages in a shared-mapped
    8-byte file (read with pread, no latency)."""

    def __init__(self, bench, name, addr=ADDR_SINK):
        super().__init__(bench, name, addr)
        self.countfile = os.path.join(self.dir, "count")
        self._base = 0

    def start(self):
        argv = [self.b.sink_bin(), "-c", self.countfile]
        if self.b.a.sink_threads:
            argv += ["-t", str(self.b.a.sink_threads)]
        argv.append("%s:%d" % (self.addr, self.port))
        self.proc = self.b.procs.start(self.name, argv,
                                       stdout=os.path.join(self.dir, "stdout"),
                                       stderr=os.path.join(self.dir, "stderr"))
        if wait_greeting(self.addr, self.port, 10, self.proc) is None:
            raise RuntimeError("sink did not start")
        self._base = self._total()

    def _total(self):
        try:
            fd = os.open(self.countfile, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            # the value only grows: two equal reads are not a torn one
            prev = None
            while True:
                b = os.pread(fd, 8, 0)
                v = int.from_bytes(b, "little") if len(b) == 8 else 0
                if v == prev:
                    return v
                prev = v
        finally:
            os.close(fd)

    def messages(self):
        """Messages the sink has received since start (or the last reset)."""
        return self._total() - self._base

    def reset(self):
        self._base = self._total()

    def stop(self):
        self.b.procs.stop(self.name)


def make_sink(bench, name):
    return (SmtpSink if bench.a.sink == "smtp-sink" else FastSink)(bench, name)


class SmtpSink(_SinkBase):
    def __init__(self, bench, name, addr=ADDR_SINK):
        super().__init__(bench, name, addr)
        self.out = os.path.join(self.dir, "stdout")

    def start(self):
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            argv += ["-u", "root"]       # required when run as root
        argv += ["-c", "-m", "1024", "inet:%s:%d" % (self.addr, self.port), "1024"]
        self.proc = self.b.procs.start(self.name, argv, stdout=self.out,
                                       stderr=os.path.join(self.dir, "stderr"))
        if wait_greeting(self.addr, self.port, 10, self.proc) is None:
            raise RuntimeError("smtp-sink did not start")
        self._base = 0
        self._base = self.messages()   # the greeting probe counted nothing

    def messages(self):
        """Messages the sink has received since start (its -c counter)."""
        try:
            with open(self.out, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 256))
                tail = f.read().decode(errors="replace")
        except FileNotFoundError:
            return 0
        m = re.findall(r"mesg=(\d+)", tail)
        return (int(m[-1]) if m else 0) - self._base

    def reset(self):
        self._base += self.messages()

    def stop(self):
        self.b.procs.stop(self.name)


# --------------------------------------------------------------------------
# the benchmark

class Bench:
    def __init__(self, a):
        self.a = a
        base = a.tmpdir or "/var/tmp"
        self.tmp = tempfile.mkdtemp(prefix="mtad-bench-", dir=base)
        os.chmod(self.tmp, 0o755)   # Postfix daemons (user postfix) must reach it
        self.procs = Procs(self.tmp)
        self.build = os.path.abspath(a.build)
        self.mtad = os.path.join(self.build, "mtad")
        self.mtaq = os.path.join(self.build, "mtaq")
        self.res = {"parameters": {}, "results": {}}
        self.cells = [(s, z, r) for s in a.sessions for z in a.sizes for r in a.rcpts]

    # ---- environment

    def check_tools(self):
        need = [self.mtad, self.mtaq, SMTP_SOURCE, POSTFIX]
        if self.a.sink == "smtp-sink":
            need.append(SMTP_SINK)
        missing = [p for p in need if not os.access(p, os.X_OK)]
        if missing:
            sys.exit("bench: missing %s (build with `meson setup build-bench "
                     "--buildtype=release && ninja -C build-bench`; smtp-source, "
                     "smtp-sink and postfix come from Debian's postfix package)"
                     % ", ".join(missing))

    def sink_bin(self):
        p = os.path.join(self.build, "tests", "bench", "sink")
        if os.access(p, os.X_OK):
            return p
        out = os.path.join(self.tmp, "sink")
        if not os.access(out, os.X_OK):
            r = sh(["cc", "-O2", "-std=gnu11", "-D_GNU_SOURCE",
                    os.path.join(HERE, "sink.c"), "-lpthread", "-o", out])
            if r.returncode != 0:
                raise RuntimeError("building sink failed: %s" % r.stderr)
        return out

    def spoolfill(self):
        p = os.path.join(self.build, "tests", "bench", "spoolfill")
        if os.access(p, os.X_OK):
            return p
        # Standalone build against the build's libmta.a (when the meson
        # snippet is not wired in).
        out = os.path.join(self.tmp, "spoolfill")
        libs = sh(["pkg-config", "--libs", "libuv", "gnutls", "lmdb", "inih",
                   "getdns"]).stdout.split()
        r = sh(["cc", "-O2", "-std=gnu11", "-D_GNU_SOURCE",
                "-I", os.path.join(ROOT, "libmta"),
                os.path.join(HERE, "spoolfill.c"),
                os.path.join(self.build, "libmta.a")] + libs + ["-lpthread", "-o", out])
        if r.returncode != 0:
            raise RuntimeError("building spoolfill failed: %s" % r.stderr)
        return out

    def machine(self):
        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        fs = sh(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", self.tmp]).stdout.strip()
        mem = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
        return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
                "memory_bytes": mem, "filesystem": fs,
                "loadavg_at_start": list(os.getloadavg()), "tmpdir": self.tmp,
                "hostname": socket.gethostname()}

    def versions(self):
        rev = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
        pf = sh([POSTCONF, "-d", "-h", "mail_version"]).stdout.strip()
        mv = sh([self.mtad, "--version"]).stdout.strip()
        bt = ""
        try:
            with open(os.path.join(self.build, "meson-info", "intro-buildoptions.json")) as f:
                for o in json.load(f):
                    if o["name"] == "buildtype":
                        bt = o["value"]
        except (OSError, ValueError, KeyError):
            pass
        return {"mtad_git_rev": rev + ("-dirty" if dirty else ""), "mtad": mv,
                "mtad_buildtype": bt, "postfix": pf,
                "valgrind": sh(["valgrind", "--version"]).stdout.strip()
                if shutil.which("valgrind") else None}

    # ---- parts

    def part_disk(self):
        """fdatasync()s per second of small writes in the tmp dir's file
        system (where the spools live): 512-byte overwrites at offset 0 (the
        device's flush rate) and 4 KiB appends (each also commits metadata)."""
        path = os.path.join(self.tmp, "fsync.test")
        out = {}
        for kind in ("overwrite_512", "append_4k"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            buf = b"x" * (512 if kind == "overwrite_512" else 4096)
            n = 0
            t0 = time.monotonic()
            off = 0
            while time.monotonic() - t0 < self.a.disk_seconds:
                if kind == "overwrite_512":
                    os.pwrite(fd, buf, 0)
                else:
                    os.pwrite(fd, buf, off)
                    off += len(buf)
                os.fdatasync(fd)
                n += 1
            dt = time.monotonic() - t0
            os.close(fd)
            out[kind + "_per_s"] = round(n / dt, 1)
        os.unlink(path)
        self.res["results"]["disk"] = out
        log("disk:", out)

    def part_ceiling(self):
        sink = make_sink(self, "sink-ceiling")
        sink.start()
        out = {}
        try:
            for (s, z, r) in self.cells:
                runs = []
                nz = noise_begin()
                for i in range(self.a.runs):
                    sink.reset()
                    dt = run_source(sink.addr, sink.port, self.a.messages, z, r, s, self.a.reuse)
                    got = sink.messages()
                    if self.a.sink == "sink" and got != self.a.messages:
                        raise RuntimeError("sink counted %d of %d" % (got, self.a.messages))
                    runs.append(self.a.messages / dt)
                noise_end(nz)
                out[cell_key(s, z, r)] = {"runs": [round(x, 1) for x in runs],
                                          "median": round(median(runs), 1),
                                          "noise": nz}
                log("ceiling %s: %.0f msg/s%s" % (cell_key(s, z, r), median(runs),
                                                  "  NOISY " + ", ".join(nz["why"])
                                                  if nz["noisy"] else ""))
        finally:
            sink.stop()
        self.res["results"]["ceiling"] = out
        self.res["results"]["ceiling_sink"] = self.a.sink

    def part_threads(self):
        """server.threads = 1 against 2 (issue 15 item 3): the accept
        cells with mtad alone, alternating.  On 2 cores smtp-source competes
        with mtad's threads for the same cores."""
        n = self.a.messages
        counts = [1, 2]
        out = {}
        for (s, z, r) in self.cells:
            runs = {t: [] for t in counts}
            nz = noise_begin()
            for i in range(self.a.runs):
                for t in rotate(counts, i):
                    mt = Mtad(self, "mtad-threads-%d" % t, ADDR_MTAD, threads=t)
                    try:
                        mt.start(fresh=True)
                        dt = run_source(mt.addr, mt.port, n, z, r, s, self.a.reuse)
                        _, got, _ = mt.summary()
                    finally:
                        mt.stop()
                    if got != n:
                        raise RuntimeError("mtad (threads=%d) queued %s of %d" % (t, got, n))
                    runs[t].append(n / dt)
            k = cell_key(s, z, r)
            out[k] = {"runs": {str(t): [round(x, 1) for x in runs[t]] for t in counts},
                      "median": {str(t): round(median(runs[t]), 1) for t in counts},
                      "noise": noise_end(nz)}
            out[k]["ratio_2_to_1"] = round(median(runs[2]) / median(runs[1]), 2)
            log("threads %s: 1 thread %.0f, 2 threads %.0f msg/s (x%.2f)%s" % (
                k, median(runs[1]), median(runs[2]), out[k]["ratio_2_to_1"],
                " noisy" if is_noisy(out[k]) else ""))
        self.res["results"]["threads"] = out

    def part_accept(self):
        n = self.a.messages
        mt = Mtad(self, "mtad-accept", ADDR_MTAD)
        pf = Postfix(self, "postfix-accept", self.a.postfix_mode)
        pf.start()
        others = self.start_peers("accept", "hold")
        out = {}
        try:
            for (s, z, r) in self.cells:
                rm, rp, cpu = [], [], []
                nz = noise_begin()
                rpeer = {name: [] for name in others}
                for i in range(self.a.runs):
                    for who in rotate(["mtad", "postfix"] + list(others), i):
                        if who in others:
                            self.peer_run(others, who, rpeer[who], s, z, r)
                        elif who == "mtad":
                            mt.start(fresh=True)
                            dt = run_source(mt.addr, mt.port, n, z, r, s, self.a.reuse)
                            cpu.append(thread_cpu(mt.proc.pid))
                            _, got, _ = mt.summary()
                            mt.stop()
                            if got != n:
                                raise RuntimeError("mtad queued %s of %d" % (got, n))
                            rm.append(n / dt)
                        else:
                            pf.clear()
                            dt = run_source(pf.addr, pf.port, n, z, r, s, self.a.reuse)
                            got = pf.count()
                            if got != n:
                                raise RuntimeError("postfix queued %d of %d" % (got, n))
                            rp.append(n / dt)
                mm, mp = median(rm), median(rp)
                out[cell_key(s, z, r)] = {
                    "mtad_runs": [round(x, 1) for x in rm],
                    "postfix_runs": [round(x, 1) for x in rp],
                    "mtad": round(mm, 1), "postfix": round(mp, 1),
                    "ratio": round(mm / mp, 2),
                    "noise": noise_end(nz),
                    # CPU seconds of mtad's threads per run (start-up
                    # included): loop thread first, then the writer
                    "mtad_thread_cpu_s": cpu,
                    "mtad_wall_s": [round(n / x, 3) for x in rm]}
                self.peer_cell(out[cell_key(s, z, r)], rpeer)
                log("accept %s: mtad %.0f  postfix %.0f msg/s  (x%.2f)%s" % (
                    cell_key(s, z, r), mm, mp, mm / mp, peer_log(out[cell_key(s, z, r)])))
        finally:
            mt.stop()
            pf.clear()
            pf.stop()
            self.stop_peers(others)
        self.res["results"]["accept"] = out

    def part_relay(self):
        n = self.a.messages
        sink = make_sink(self, "sink-relay")
        sink.start()
        mt = Mtad(self, "mtad-relay", ADDR_MTAD,
                  relayhost="[%s]:%d" % (sink.addr, sink.port))
        try:
            mt.start(fresh=True)
            send_one(mt.addr, mt.port)
            t0 = time.monotonic()
            while sink.messages() < 1 and time.monotonic() - t0 < self.a.relay_probe:
                time.sleep(0.05)
            ok = sink.messages() >= 1
            mt.stop()
            if not ok:
                print("relay: skipped (delivery not available)", flush=True)
                self.res["results"]["relay"] = {
                    "skipped": "delivery not available",
                    "reason": "mtad delivered nothing to smtp-sink within %gs"
                              % self.a.relay_probe}
                return
            pf = Postfix(self, "postfix-relay", "relay",
                         relayhost="[%s]:%d" % (sink.addr, sink.port))
            pf.start()
            others = self.start_peers("relay", "relay", sink)
            out = {}
            try:
                for (s, z, r) in self.cells:
                    rm, rp = [], []
                    nz = noise_begin()
                    rpeer = {name: [] for name in others}
                    for i in range(self.a.runs):
                        for who in rotate(["mtad", "postfix"] + list(others), i):
                            if who in others:
                                self.peer_run(others, who, rpeer[who], s, z, r, sink)
                            elif who == "mtad":
                                mt.start(fresh=True)
                                sink.reset()
                                t0 = time.monotonic()
                                run_source(mt.addr, mt.port, n, z, r, s, self.a.reuse)
                                wait_relayed(sink, n, lambda: mt.summary()[1] == 0,
                                             self.a.relay_timeout)
                                rm.append(n / (time.monotonic() - t0))
                                mt.stop()
                            else:
                                pf.clear()
                                sink.reset()
                                t0 = time.monotonic()
                                run_source(pf.addr, pf.port, n, z, r, s, self.a.reuse)
                                wait_relayed(sink, n, lambda: pf.count() == 0,
                                             self.a.relay_timeout)
                                rp.append(n / (time.monotonic() - t0))
                    mm, mp = median(rm), median(rp)
                    out[cell_key(s, z, r)] = {
                        "mtad_runs": [round(x, 1) for x in rm],
                        "postfix_runs": [round(x, 1) for x in rp],
                        "mtad": round(mm, 1), "postfix": round(mp, 1),
                        "ratio": round(mm / mp, 2), "noise": noise_end(nz)}
                    self.peer_cell(out[cell_key(s, z, r)], rpeer)
                    log("relay %s: mtad %.0f  postfix %.0f msg/s  (x%.2f)%s" % (
                        cell_key(s, z, r), mm, mp, mm / mp, peer_log(out[cell_key(s, z, r)])))
            finally:
                pf.stop()
                self.stop_peers(others)
            self.res["results"]["relay"] = out
            self.res["results"]["relay_sink"] = self.a.sink
        finally:
            mt.stop()
            sink.stop()

    # ---- peers (issue 15): Exim and OpenSMTPD, see peers.py

    def prepare_peers(self):
        """Unpacks the --peers once; a peer that cannot be had is skipped
        with its reason (printed, and in the results)."""
        names = [x for x in self.a.peers.split(",") if x]
        roots, debs, skipped = peers.prepare(names, self.a.peer_cache)
        self.peer_roots = roots
        self.res["peers"] = {"names": names, "skipped": dict(skipped), "configs": {},
                             "errors": {}}
        self.res["peers"]["available"] = list(roots)
        self.res["versions"]["peers"] = {k: {"debs": v} for k, v in debs.items()}
        for name, why in skipped.items():
            print("%s: skipped (%s)" % (name, why), flush=True)

    def start_peers(self, part, mode, sink=None):
        """Starts every prepared peer for PART; returns {name: peer}.  In
        relay mode one probe message must reach SINK within --relay-probe
        seconds, or that peer is skipped for the part."""
        live = {}
        for name, root in getattr(self, "peer_roots", {}).items():
            relayhost = "%s:%d" % (sink.addr, sink.port) if sink else None
            p = peers.PEER_CLASSES[name](self, "%s-%s" % (name, part), mode, root,
                                         relayhost=relayhost)
            self.res["peers"]["configs"][p.name] = p.config
            try:
                p.start()
                self.res["versions"]["peers"][name]["reports"] = p.version()
                if sink:
                    sink.reset()
                    send_one(p.addr, p.port)
                    t0 = time.monotonic()
                    while ((sink.messages() < 1 or p.count() > 0)
                           and time.monotonic() - t0 < self.a.relay_probe):
                        time.sleep(0.05)
                    if sink.messages() < 1:
                        raise RuntimeError("delivered nothing to smtp-sink within %gs"
                                           % self.a.relay_probe)
                    sink.reset()
                live[name] = p
            except (RuntimeError, OSError) as e:
                p.stop()
                self.res["peers"]["skipped"]["%s/%s" % (name, part)] = str(e)
                print("%s %s: skipped (%s)" % (part, name, e), flush=True)
        return live

    def stop_peers(self, live):
        for p in live.values():
            try:
                p.clear()
            except (RuntimeError, OSError):
                pass
            p.stop()

    def peer_run(self, live, who, runs, s, z, r, sink=None):
        """One run of one peer with --peer-messages N: accept (queued count
        checked) or, with SINK, relay (until the sink counted N and the
        peer's queue is empty).  A failure drops the peer from the rest of
        the part."""
        p = live[who]
        n = self.a.peer_messages
        try:
            p.clear()
            if sink:
                sink.reset()
            t0 = time.monotonic()
            run_source(p.addr, p.port, n, z, r, s, self.a.reuse)
            if sink:
                wait_relayed(sink, n, lambda: p.count() == 0, self.a.relay_timeout)
            else:
                got = p.count()
                if got != n:
                    raise RuntimeError("%s queued %d of %d" % (who, got, n))
            runs.append(n / (time.monotonic() - t0))
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            log("%s: %s (dropped from this part)" % (who, e))
            self.res["peers"]["errors"]["%s %s" % (p.name, cell_key(s, z, r))] = str(e)
            runs.clear()
            p.stop()
            del live[who]

    def peer_cell(self, cell, rpeer):
        """Adds the peers' medians to a result cell, and mtad's ratio to the
        best peer (Postfix included) and to the best peer that syncs before
        its 250 (all but OpenSMTPD)."""
        for name, runs in rpeer.items():
            if runs:
                cell[name + "_runs"] = [round(x, 1) for x in runs]
                cell[name] = round(median(runs), 1)
        for key, names in (("best", ["postfix"] + list(peers.PEER_CLASSES)),
                           ("best_sync", ["postfix"] + [k for k in peers.PEER_CLASSES
                                                        if k not in peers.NO_SYNC])):
            have = [(cell[k], k) for k in names if cell.get(k)]
            if have and cell.get("mtad"):
                v, k = max(have)
                cell[key + "_peer"] = k
                cell["ratio_" + key] = round(cell["mtad"] / v, 2)

    def part_scale(self):
        fill = self.spoolfill()
        n = self.a.scale_count
        out = {"count": n, "batch": self.a.scale_batch, "body_bytes": self.a.scale_body}
        mt = Mtad(self, "mtad-scale", ADDR_MTAD_SCALE)
        data = os.path.join(mt.spool, "data.mdb")
        if os.path.exists(mt.spool):
            shutil.rmtree(mt.spool)

        def spoolfill(*args):
            r = sh([fill, mt.spool] + [str(x) for x in args])
            if r.returncode != 0:
                raise RuntimeError("spoolfill %s: %s" % (args, r.stderr))
            memcg.chown_spool(mt.spool)   # mtad as root runs as user mtad
            return json.loads(r.stdout)

        # RSS of mtad with rss_count queued (a spool of its own)
        rss_n = self.a.rss_count
        spoolfill("fill", rss_n, self.a.scale_batch, self.a.scale_body)
        mt.start(fresh=False)
        time.sleep(1)
        rss_idle = read_status(mt.proc.pid)
        run_source(mt.addr, mt.port, 1000, 5120, 1, 10, False)
        rss_after = read_status(mt.proc.pid)
        mt.stop()
        shutil.rmtree(mt.spool)
        out["rss"] = {"queued": rss_n, "after_start": rss_idle,
                      "after_1000_accepted": rss_after}
        log("scale: RSS with %d queued: %.1f MB (anon %.1f MB)" % (
            rss_n, rss_idle.get("VmRSS", 0) / 1e6, rss_idle.get("RssAnon", 0) / 1e6))

        f = spoolfill("fill", n, self.a.scale_batch, self.a.scale_body)
        out["fill"] = f
        log("scale: filled %d in %.1fs (%.0f msg/s), data.mdb %.0f MB" % (
            n, f["seconds"], f["rate"], f["file_bytes"] / 1e6))

        # restart -> first 220 (and first 250), warm and cold page cache
        restarts = []
        for i in range(self.a.runs):
            restarts.append(self._restart_once(mt))
        drop_file_cache(data)
        cold = self._restart_once(mt)
        out["restart_s"] = {"warm_runs": [r["greeting_s"] for r in restarts],
                            "warm": median([r["greeting_s"] for r in restarts]),
                            "warm_first_250": median([r["first_250_s"] for r in restarts]),
                            "cold": cold["greeting_s"],
                            "cold_first_250": cold["first_250_s"]}
        log("scale: restart -> 220: %.3fs warm, %.3fs cold" % (
            out["restart_s"]["warm"], cold["greeting_s"]))

        # mtaq --summary
        sums = []
        for i in range(self.a.runs):
            dt, got, text = mt.summary()
            sums.append(dt)
        drop_file_cache(data)
        cold_dt, got, text = mt.summary()
        out["mtaq_summary_s"] = {"warm_runs": [round(x, 3) for x in sums],
                                 "warm": round(median(sums), 3), "cold": round(cold_dt, 3),
                                 "output": text}
        log("scale: mtaq --summary: %.3fs warm, %.3fs cold (%s)" % (
            median(sums), cold_dt, text))

        # every message out again, then in and out once more: file size
        d = spoolfill("drain", self.a.scale_batch)
        out["drain"] = d
        f3 = spoolfill("fill", n, self.a.scale_batch, self.a.scale_body)
        d2 = spoolfill("drain", self.a.scale_batch)
        out["refill"] = f3
        out["drain2"] = d2
        out["file_bytes"] = {"after_fill": f["file_bytes"],
                             "after_in_and_out": d["file_bytes"],
                             "after_second_in_and_out": d2["file_bytes"]}
        log("scale: data.mdb %.0f MB after %d in, %.0f MB after out, %.0f MB after a "
            "second round" % (f["file_bytes"] / 1e6, n, d["file_bytes"] / 1e6,
                              d2["file_bytes"] / 1e6))
        shutil.rmtree(mt.spool)

        # steady-state churn: window queued, n through
        cdir = os.path.join(self.tmp, "churn-spool")
        r = sh([fill, cdir, "churn", str(n), str(self.a.churn_window),
                str(self.a.scale_batch), str(self.a.scale_body)])
        if r.returncode == 0:
            out["churn"] = json.loads(r.stdout)
            log("scale: churn %d through a window of %d: data.mdb %.0f MB" % (
                n, self.a.churn_window, out["churn"]["file_bytes"] / 1e6))
        shutil.rmtree(cdir, ignore_errors=True)
        self.res["results"]["scale"] = out

    def _restart_once(self, mt):
        t0 = time.monotonic()
        mt.proc = self.procs.start(mt.name, [self.mtad, "-c", mt.conf],
                                   stderr=os.path.join(mt.dir, "mtad.log"))
        g = wait_greeting(mt.addr, mt.port, 120, mt.proc)
        if g is None:
            raise RuntimeError("mtad-scale did not start")
        g = time.monotonic() - t0
        send_one(mt.addr, mt.port)
        f = time.monotonic() - t0
        mt.stop()
        return {"greeting_s": round(g, 4), "first_250_s": round(f, 4)}

    def part_memcg(self):
        memcg.run(self)

    def part_callgrind(self):
        if not shutil.which("valgrind"):
            log("callgrind: valgrind missing (apt-get install valgrind): skipped")
            self.res["results"]["callgrind"] = {"skipped": "valgrind not installed"}
            return
        m = self.a.callgrind_messages
        out = {"messages": [m, 2 * m], "sessions": 10, "size": 5120, "rcpts": 1}
        totals = {}
        # mtad drops to server.user after start-up: valgrind writes its
        # output file as that user at exit
        cgdir = os.path.join(self.tmp, "callgrind")
        os.makedirs(cgdir, exist_ok=True)
        os.chmod(cgdir, 0o1777)
        for k in (m, 2 * m):
            cg = os.path.join(cgdir, "callgrind.%d.out" % k)
            with open(cg, "w"):
                pass
            os.chmod(cg, 0o666)   # created here, rewritten by server.user
            mt = Mtad(self, "mtad-callgrind", ADDR_MTAD,
                      valgrind=["valgrind", "--tool=callgrind", "--callgrind-out-file=" + cg])
            mt.start(fresh=True, timeout=120)
            run_source(mt.addr, mt.port, k, 5120, 1, 10, self.a.reuse)
            mt.stop(timeout=120)
            ir = None
            with open(cg) as f:
                for line in f:
                    if line.startswith("totals:") or line.startswith("summary:"):
                        ir = int(line.split()[1])
            totals[k] = ir
            if self.a.keep_callgrind:
                dst = os.path.join(HERE, "results", "callgrind.%d.out" % k)
                shutil.copy(cg, dst)
        out["instructions_total"] = {str(k): v for k, v in totals.items()}
        out["per_message_marginal"] = round((totals[2 * m] - totals[m]) / m)
        out["per_message_including_startup"] = round(totals[2 * m] / (2 * m))
        log("callgrind: %d instructions per accepted message (marginal, %d vs %d messages)"
            % (out["per_message_marginal"], 2 * m, m))
        self.res["results"]["callgrind"] = out

    # ---- output

    def table(self):
        R = self.res["results"]
        L = []
        w = L.append
        m = self.res["machine"]
        v = self.res["versions"]
        w("")
        w("mtad benchmark  %s" % self.res["timestamp"])
        w("machine: %d CPU %s, kernel %s, fs %s" % (m["nproc"], m["cpu"], m["kernel"],
                                                   m["filesystem"]))
        w("load average: %.2f at start, %.2f at end (other work on the machine "
          "skews results)" % (m["loadavg_at_start"][0], m.get("loadavg_at_end", [0])[0]))
        w("versions: mtad %s (%s, %s), postfix %s" % (v["mtad_git_rev"], v["mtad"],
                                                     v["mtad_buildtype"], v["postfix"]))
        p = self.res["parameters"]
        w("parameters: %d messages x %d alternating runs per cell, smtp-source %s, "
          "postfix mode %s" % (p["messages"], p["runs"],
                               "-d (one session, many messages)" if p["reuse"]
                               else "one connection per message", p["postfix_mode"]))
        if "disk" in R:
            w("disk: %.0f fdatasync/s (512 B overwrite), %.0f fdatasync/s (4 KiB append)" % (
                R["disk"]["overwrite_512_per_s"], R["disk"]["append_4k_per_s"]))
        w("")
        hdr = "%-20s %10s %10s %7s %10s %9s  %-14s" % ("cell (sess/size/rcpt)", "mtad", "postfix",
                                                   "ratio", "ceiling", "mtad/ceil", "noisy")
        if "accept" in R or "ceiling" in R:
            w("accept, msgs/s (median); ceiling: smtp-source -> %s; noisy: see the rule "
              "in run.py (other work on the machine), %% of ceiling only when the "
              "ceiling is clean" % R.get("ceiling_sink", self.a.sink))
            w(hdr + self.peer_hdr())
            for (s, z, r) in self.cells:
                k = cell_key(s, z, r)
                a = R.get("accept", {}).get(k, {})
                cc = R.get("ceiling", {}).get(k, {})
                c = cc.get("median")
                pct = fmt(a["mtad"] / c if a.get("mtad") and c else None, "%.0f%%", 100)
                if is_noisy(cc) and pct != "-":
                    pct = "(noisy)"
                w("%-20s %10s %10s %7s %10s %9s  %-14s" % (
                    k, fmt(a.get("mtad")), fmt(a.get("postfix")),
                    fmt(a.get("ratio"), "%.2fx"), fmt(c), pct,
                    ",".join(n for n, x in (("accept", a), ("ceiling", cc)) if is_noisy(x)))
                  + self.peer_cols(a))
        if "relay" in R:
            w("")
            if "skipped" in R["relay"]:
                w("relay: skipped (%s; %s)" % (R["relay"]["skipped"],
                                              R["relay"].get("reason", "")))
            else:
                w("relay, msgs/s until the sink counted all (median)")
                w("%-20s %10s %10s %7s %11s  %-14s" % ("cell", "mtad", "postfix", "ratio",
                                                       "mtad/accept", "noisy")
                  + self.peer_hdr())
                for (s, z, r) in self.cells:
                    a = R["relay"].get(cell_key(s, z, r), {})
                    acc = R.get("accept", {}).get(cell_key(s, z, r), {})
                    pa = fmt(a["mtad"] / acc["mtad"] if a.get("mtad") and acc.get("mtad")
                             else None, "%.0f%%", 100)
                    if is_noisy(acc) and pa != "-":
                        pa = "(noisy)"
                    w("%-20s %10s %10s %7s %11s  %-14s" % (
                        cell_key(s, z, r), fmt(a.get("mtad")), fmt(a.get("postfix")),
                        fmt(a.get("ratio"), "%.2fx"), pa,
                        ",".join(n for n, x in (("relay", a), ("accept", acc))
                                 if is_noisy(x)))
                      + self.peer_cols(a))
        w(self.peer_notes())
        if "threads" in R:
            w("")
            w("server.threads, accept msgs/s (median; smtp-source shares the same cores)")
            w("%-20s %10s %10s %7s  %s" % ("cell", "1 thread", "2 threads", "ratio", "noisy"))
            for (s, z, r) in self.cells:
                t = R["threads"].get(cell_key(s, z, r), {})
                md = t.get("median", {})
                w("%-20s %10s %10s %7s  %s" % (
                    cell_key(s, z, r), fmt(md.get("1")), fmt(md.get("2")),
                    fmt(t.get("ratio_2_to_1"), "%.2fx"), "noisy" if is_noisy(t) else ""))
        if "scale" in R:
            S = R["scale"]
            w("")
            w("queue scale (%d messages, %d B body, %d per txn)" % (
                S["count"], S["body_bytes"], S["batch"]))
            w("  fill through the spool API   %.1f s (%.0f msg/s)" % (
                S["fill"]["seconds"], S["fill"]["rate"]))
            w("  restart -> 220 greeting      %.3f s warm, %.3f s cold cache "
              "(first 250: %.3f / %.3f s)" % (
                S["restart_s"]["warm"], S["restart_s"]["cold"],
                S["restart_s"]["warm_first_250"], S["restart_s"]["cold_first_250"]))
            w("  mtaq --summary               %.3f s warm, %.3f s cold cache" % (
                S["mtaq_summary_s"]["warm"], S["mtaq_summary_s"]["cold"]))
            rs = S["rss"]
            w("  mtad RSS, %d queued         %.1f MB (anon %.1f MB); %.1f MB after "
              "1000 accepted" % (rs["queued"], rs["after_start"].get("VmRSS", 0) / 1e6,
                                 rs["after_start"].get("RssAnon", 0) / 1e6,
                                 rs["after_1000_accepted"].get("VmRSS", 0) / 1e6))
            fb = S["file_bytes"]
            w("  data.mdb                     %.0f MB full, %.0f MB after all out, "
              "%.0f MB after a 2nd in+out" % (fb["after_fill"] / 1e6,
                                             fb["after_in_and_out"] / 1e6,
                                             fb["after_second_in_and_out"] / 1e6))
            if "churn" in S:
                w("  churn (window %d)           %.0f MB data.mdb after %d through" % (
                    S["churn"]["window"], S["churn"]["file_bytes"] / 1e6,
                    S["churn"]["messages"]))
        if "callgrind" in R and "skipped" not in R["callgrind"]:
            C = R["callgrind"]
            w("")
            w("callgrind: %d instructions per accepted message (5 KB, 1 rcpt, 10 sessions; "
              "marginal between %d and %d messages)" % (
                C["per_message_marginal"], C["messages"][0], C["messages"][1]))
        L += memcg.table_lines(R)
        w("")
        w("targets")
        for t in self.targets():
            w("  %-48s %-22s %s" % t)
        return "\n".join(L)

    def peer_hdr(self):
        if not self.res.get("peers", {}).get("available"):
            return ""
        return " | %10s %10s %8s %8s" % ("exim", "opensmtpd*", "vs best", "vs sync")

    def peer_cols(self, a):
        if not self.res.get("peers", {}).get("available"):
            return ""
        return " | %10s %10s %8s %8s" % (fmt(a.get("exim")), fmt(a.get("opensmtpd")),
                                         fmt(a.get("ratio_best"), "%.2fx"),
                                         fmt(a.get("ratio_best_sync"), "%.2fx"))

    def peer_notes(self):
        P = self.res.get("peers")
        if not P or not P.get("names"):
            return ""
        V = self.res["versions"].get("peers", {})
        L = ["", "peers (%d messages per run): %s" % (self.res["parameters"]["peer_messages"],
                                                    "; ".join(
            "%s (%s)" % (n, V[n].get("reports") or ", ".join(
                "%s %s" % kv for kv in V[n]["debs"].items())) for n in V))]
        L.append("  ratio = mtad / postfix; vs best = mtad / the fastest of postfix, exim, "
                 "opensmtpd; vs sync = mtad / the fastest that syncs before its 250")
        L.append("  * opensmtpd does not fsync its queue before 250 (tests/bench/peers.py)")
        for k, why in sorted(P.get("skipped", {}).items()):
            L.append("  %s: skipped (%s)" % (k, why))
        for k, why in sorted(P.get("errors", {}).items()):
            L.append("  %s: failed, dropped (%s)" % (k, why))
        return "\n".join(L)

    def targets(self):
        R = self.res["results"]
        out = []
        k = cell_key(50, 5120, 1)
        a = R.get("accept", {}).get(k)
        if a:
            out.append(("accept >= 3x postfix (50 sess, 5 KB, 1 rcpt)",
                        "%.2fx" % a["ratio"], verdict(a["ratio"] >= 3)))
        rl = R.get("relay", {})
        if "skipped" in rl:
            out.append(("relay >= 2x postfix", "skipped", "-"))
        elif rl.get(k):
            out.append(("relay >= 2x postfix (50 sess, 5 KB, 1 rcpt)",
                        "%.2fx" % rl[k]["ratio"], verdict(rl[k]["ratio"] >= 2)))
        c = R.get("ceiling", {}).get(k)
        if a and c and is_noisy(c):
            out.append(("accept >= 50% of the ceiling", "ceiling noisy", "-"))
        elif a and c:
            f = a["mtad"] / c["median"]
            out.append(("accept >= 50% of the ceiling", "%.0f%%" % (100 * f),
                        verdict(f >= 0.5)))
        S = R.get("scale")
        if S:
            n = S["count"]
            out.append(("restart < 2 s with %d queued" % n,
                        "%.3f s (cold %.3f)" % (S["restart_s"]["warm"], S["restart_s"]["cold"]),
                        verdict(max(S["restart_s"]["warm"], S["restart_s"]["cold"]) < 2)))
            out.append(("mtaq --summary < 1 s with %d queued" % n,
                        "%.3f s (cold %.3f)" % (S["mtaq_summary_s"]["warm"],
                                                S["mtaq_summary_s"]["cold"]),
                        verdict(max(S["mtaq_summary_s"]["warm"],
                                    S["mtaq_summary_s"]["cold"]) < 1)))
            rss = S["rss"]["after_start"].get("VmRSS", 0)
            out.append(("RSS < 100 MB with %d queued" % S["rss"]["queued"],
                        "%.1f MB" % (rss / 1e6), verdict(rss < 100e6)))
            if n < 1000000:
                out.append(("(scale ran with %d, not 1,000,000)" % n, "", ""))
        return out + memcg.targets(R)


def rotate(xs, i):
    """Run order of run I: the systems rotated by I (alternating for two)."""
    i %= len(xs)
    return xs[i:] + xs[:i]


def peer_log(cell):
    return "".join("  %s %.0f" % (k, cell[k]) for k in peers.PEER_CLASSES if cell.get(k))


def verdict(ok):
    return "met" if ok else "NOT met"


def fmt(x, f="%.0f", mul=1):
    return "-" if x is None else f % (x * mul)


def cell_key(s, z, r):
    return "%d/%s/%d" % (s, ("%dK" % (z // 1024)) if z % 1024 == 0 else str(z), r)


def wait_relayed(sink, n, queue_empty, timeout):
    t0 = time.monotonic()
    while sink.messages() < n:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("relay: sink counted %d of %d in %ds" % (
                sink.messages(), n, timeout))
        time.sleep(0.01)
    while not queue_empty():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("relay: queue not empty after %ds" % timeout)
        time.sleep(0.02)


def parse_list(s, conv=int):
    return [conv(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"),
                    help="meson build directory with mtad and mtaq (default build-bench)")
    ap.add_argument("--only",
                    default="disk,ceiling,accept,relay,threads,scale,memcg,callgrind")
    ap.add_argument("--messages", type=int, default=2000, help="messages per run")
    ap.add_argument("--runs", type=int, default=3, help="alternating runs per cell")
    ap.add_argument("--sessions", default="10,50")
    ap.add_argument("--sizes", default="5120,102400", help="payload bytes (smtp-source -l)")
    ap.add_argument("--rcpts", default="1,10")
    ap.add_argument("--reuse", action="store_true",
                    help="smtp-source -d: many messages per session "
                         "(default: one connection per message)")
    ap.add_argument("--postfix-mode", choices=("hold", "defer"), default="hold",
                    help="how Postfix holds accepted mail (default hold queue)")
    ap.add_argument("--sink", choices=("sink", "smtp-sink"), default="sink",
                    help="receiving end of ceiling and relay: tests/bench/sink "
                         "(threads, default) or Postfix's smtp-sink (one loop)")
    ap.add_argument("--sink-threads", type=int, default=0,
                    help="sink worker threads (default: one per CPU)")
    ap.add_argument("--relay-probe", type=float, default=10.0,
                    help="seconds to wait for mtad's first delivery before skipping relay")
    ap.add_argument("--relay-timeout", type=float, default=300.0)
    ap.add_argument("--peers", default="exim,opensmtpd",
                    help="other relays in the accept and relay parts besides Postfix "
                         "(comma separated, empty for none; tests/bench/peers.py)")
    ap.add_argument("--peer-messages", type=int,
                    help="messages per run of Exim and OpenSMTPD (default: --messages, "
                         "at most 500: they take one process per connection and are "
                         "10-50x slower here; the rate is messages / wall time either way)")
    ap.add_argument("--peer-cache",
                    help="where the peers' .debs are downloaded and unpacked "
                         "(default BUILD/peers)")
    ap.add_argument("--scale-count", type=int, default=1000000)
    ap.add_argument("--scale-batch", type=int, default=10000)
    ap.add_argument("--scale-body", type=int, default=1000)
    ap.add_argument("--rss-count", type=int, default=100000)
    ap.add_argument("--churn-window", type=int, default=20000)
    ap.add_argument("--callgrind-messages", type=int, default=500)
    ap.add_argument("--keep-callgrind", action="store_true",
                    help="copy the callgrind.out files to tests/bench/results/")
    memcg.add_args(ap)
    ap.add_argument("--disk-seconds", type=float, default=3.0)
    ap.add_argument("--tmpdir", help="where the spools go (default /var/tmp); "
                                     "its file system is the one measured")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    a.sessions = parse_list(a.sessions)
    a.sizes = parse_list(a.sizes)
    a.rcpts = parse_list(a.rcpts)
    a.peer_messages = a.peer_messages or min(a.messages, 500)
    a.peer_cache = os.path.abspath(a.peer_cache or os.path.join(a.build, "peers"))
    parts = [p for p in a.only.split(",") if p]

    b = Bench(a)
    b.check_tools()

    def cleanup():
        b.procs.stop_all()
        if not a.keep:
            shutil.rmtree(b.tmp, ignore_errors=True)
        else:
            log("temp dir kept:", b.tmp)
    atexit.register(cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda *_: sys.exit(130))

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    b.res["timestamp"] = stamp
    b.res["machine"] = b.machine()
    b.res["versions"] = b.versions()
    if "accept" in parts or "relay" in parts:
        b.prepare_peers()
    b.res["parameters"] = {
        "parts": parts, "messages": a.messages, "runs": a.runs,
        "sessions": a.sessions, "sizes": a.sizes, "rcpts": a.rcpts,
        "reuse": a.reuse, "postfix_mode": a.postfix_mode,
        "sink": a.sink, "sink_threads": a.sink_threads or os.cpu_count(),
        "noise_rule": {"idle_pct_below": NOISE_IDLE_PCT,
                       "load1_rise_between_cells_above_x_cpus": NOISE_LOAD_FRAC},
        "peers": a.peers, "peer_messages": a.peer_messages,
        "scale_count": a.scale_count, "scale_batch": a.scale_batch,
        "scale_body": a.scale_body, "rss_count": a.rss_count,
        "churn_window": a.churn_window, "callgrind_messages": a.callgrind_messages,
        "smtp_source_argv_example": smtp_source_argv("ADDR", 0, a.messages, a.sizes[0],
                                                     a.rcpts[0], a.sessions[0], a.reuse),
    }
    t0 = time.monotonic()
    errors = {}
    for p in ("disk", "ceiling", "accept", "relay", "threads", "scale", "memcg",
              "callgrind"):
        if p in parts:
            log("=== %s" % p)
            try:
                getattr(b, "part_" + p)()
            except Exception as e:      # report, go on with the next part
                log("%s failed: %s" % (p, e))
                errors[p] = str(e)
    b.res["errors"] = errors
    b.res["elapsed_s"] = round(time.monotonic() - t0, 1)
    b.res["machine"]["loadavg_at_end"] = list(os.getloadavg())
    b.res["targets"] = [list(t) for t in b.targets()]
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, stamp + ".json")
    with open(path, "w") as f:
        json.dump(b.res, f, indent=1, sort_keys=True)
        f.write("\n")
    print(b.table())
    if errors:
        print("\nerrors: " + "; ".join("%s: %s" % kv for kv in errors.items()))
    print("\nresults: %s (%.0f s)" % (os.path.relpath(path), b.res["elapsed_s"]))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
