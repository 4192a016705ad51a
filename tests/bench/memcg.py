"""memcg part of the benchmark (issue 15, item 4): mtad in a memory cgroup.

A spool of --memcg-count messages (spoolfill) whose data.mdb is much bigger
than the limit; mtad (the bench's release build) starts in a cgroup v1
memory group limited to --memcg-limit MiB, with the bench's smtp-sink as
relayhost, so it delivers the queue.  After --memcg-settle seconds of
delivery alone, smtp-source sends it --memcg-send new messages while it
delivers, then it delivers alone for --memcg-after seconds more.  Sampled
every --memcg-interval seconds: the group's usage and memory.stat (cache,
rss, mapped_file), mtad's /proc status (VmRSS, VmHWM, RssAnon, RssFile),
the sink's count and mtad's queue gauge (/metrics).

Checked (reported as met / NOT met, nothing fails on a number):
  - no OOM kill (memory.oom_control oom_kill 0) and mtad alive to the end;
  - every smtp-source message answered 250 (smtp-source exit 0, no warning);
  - none lost: sink count + queued after stop >= filled + sent;
  - it kept delivering: the sink count grew in every phase, the queue fell;
  - the page cache was reclaimed: data.mdb bigger than the limit, the
    group's usage stayed at or under the limit.

Only mtad is in the group: spoolfill, smtp-source, smtp-sink and mtaq run
outside.  data.mdb is evicted from the page cache (posix_fadvise) before
mtad starts, because cgroup v1 charges a page to the group that first
faulted it in: pages left cached by spoolfill would be free for mtad.
mtad's log (level info) goes to a pipe read by a cat outside the group, as
a container's stderr would (--memcg-log file: mtad writes the file itself,
and its page cache is charged to the group too).  The group is removed at
the end (rmdir once mtad has exited).  --memcg-control repeats the run in a
group without a limit, for comparison.

run.py calls add_args(), run(bench), table_lines(results) and
targets(results).
"""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request

import run as R

CGROOT = "/sys/fs/cgroup/memory"
ADDR_MTAD_MEMCG = "127.0.200.12"
STAT_KEYS = ("cache", "rss", "rss_huge", "shmem", "mapped_file", "active_file",
             "inactive_file", "active_anon", "inactive_anon", "pgmajfault",
             "total_cache", "total_rss", "total_mapped_file")


def add_args(ap):
    ap.add_argument("--memcg-limit", type=int, default=128,
                    help="memcg: the group's memory.limit_in_bytes in MiB (128)")
    ap.add_argument("--memcg-count", type=int, default=1000000,
                    help="memcg: messages queued at start (1000000)")
    ap.add_argument("--memcg-send", type=int, default=20000,
                    help="memcg: messages smtp-source sends while mtad delivers")
    ap.add_argument("--memcg-sessions", type=int, default=10)
    ap.add_argument("--memcg-size", type=int, default=5120)
    ap.add_argument("--memcg-settle", type=float, default=15.0,
                    help="memcg: seconds of delivery before smtp-source starts")
    ap.add_argument("--memcg-after", type=float, default=15.0,
                    help="memcg: seconds of delivery after smtp-source ended")
    ap.add_argument("--memcg-interval", type=float, default=0.5)
    ap.add_argument("--memcg-log", choices=("pipe", "file"), default="pipe",
                    help="memcg: mtad's stderr to a pipe read outside the group "
                         "(as a container's), or to a file written from inside "
                         "(its page cache charged to the group)")
    ap.add_argument("--memcg-control", action="store_true",
                    help="memcg: run once more in a group without a limit")


# --------------------------------------------------------------------------
# the cgroup

class Cgroup:
    def __init__(self, name, limit):
        if not os.path.isdir(CGROOT):
            raise RuntimeError("no cgroup v1 memory controller at %s" % CGROOT)
        self.path = os.path.join(CGROOT, name)
        os.mkdir(self.path)
        self.write("memory.limit_in_bytes", str(limit))
        self.limit = int(self.read("memory.limit_in_bytes"))

    def write(self, f, v):
        with open(os.path.join(self.path, f), "w") as fh:
            fh.write(v)

    def read(self, f):
        with open(os.path.join(self.path, f)) as fh:
            return fh.read()

    def num(self, f):
        return int(self.read(f).split()[0])

    def kv(self, f):
        out = {}
        for line in self.read(f).splitlines():
            k, _, v = line.partition(" ")
            try:
                out[k] = int(v)
            except ValueError:
                pass
        return out

    def argv(self, argv):
        """argv run inside the group: a shell puts itself in and execs (the
        PID stays the same)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
                self.path] + argv

    def remove(self, timeout=30):
        t0 = time.monotonic()
        while True:
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError as e:
                if time.monotonic() - t0 > timeout:
                    R.log("memcg: cannot remove %s: %s (tasks: %s)" % (
                        self.path, e, self.read("tasks").split()))
                    return False
                time.sleep(0.2)


def chown_spool(spool):
    """spoolfill ran as root; mtad run as root drops to server.user (mtad)
    and refuses a spool owned by another user."""
    if os.geteuid() != 0:
        return
    try:
        import pwd
        pw = pwd.getpwnam("mtad")
    except KeyError:
        return
    for d, _dn, fn in os.walk(spool):
        os.chown(d, pw.pw_uid, pw.pw_gid)
        for f in fn:
            os.chown(os.path.join(d, f), pw.pw_uid, pw.pw_gid)


def http_port(conf):
    sect = None
    with open(conf) as f:
        for line in f:
            line = line.strip()
            if line.startswith("["):
                sect = line
            elif sect == "[http]" and line.startswith("listen"):
                return line.split("=", 1)[1].strip()
    return None


def queue_gauge(listen):
    """queued + active + held from mtad's /metrics, or None."""
    try:
        with urllib.request.urlopen("http://%s/metrics" % listen, timeout=5) as r:
            text = r.read().decode(errors="replace")
    except OSError:
        return None
    n = None
    for m in re.finditer(r'^mtad_queue_messages\{state="\w+"\} (\d+)', text, re.M):
        n = (n or 0) + int(m.group(1))
    return n


# --------------------------------------------------------------------------
# the part

class Sampler:
    def __init__(self, cg, pid, sink, listen, interval):
        self.cg, self.pid, self.sink, self.listen = cg, pid, sink, listen
        self.interval = interval
        self.t0 = time.monotonic()
        self.series = []
        self.peak = {"usage": 0, "cache": 0, "rss": 0, "mapped_file": 0,
                     "VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.last_q = None
        self.last_q_t = -10.0

    def sample(self, phase, fresh=False):
        t = time.monotonic() - self.t0
        st = self.cg.kv("memory.stat")
        ps = R.read_status(self.pid)
        if fresh or t - self.last_q_t >= 2.0:
            q = queue_gauge(self.listen)
            self.last_q_t = t
            if q is not None:
                self.last_q = q
        s = {"t": round(t, 1), "phase": phase,
             "usage": self.cg.num("memory.usage_in_bytes"),
             "cache": st.get("cache", 0), "rss": st.get("rss", 0),
             "mapped_file": st.get("mapped_file", 0),
             "VmRSS": ps.get("VmRSS", 0), "RssAnon": ps.get("RssAnon", 0),
             "RssFile": ps.get("RssFile", 0),
             "delivered": self.sink.messages(), "queued": self.last_q}
        for k in self.peak:
            self.peak[k] = max(self.peak[k], s[k])
        self.series.append(s)
        return s

    def run_for(self, seconds, phase, alive):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not alive():
                break
            self.sample(phase)
            time.sleep(self.interval)


def run(b):
    out = one(b, b.a.memcg_limit)
    out["checks"] = checks(out)
    for c in out["checks"]:
        R.log("memcg: %-50s %-28s %s" % tuple(c))
    if b.a.memcg_control:
        c = one(b, None)
        out["control"] = {k: c[k] for k in (
            "cgroup_end", "VmHWM", "peaks_sampled", "smtp_source", "phases",
            "delivered", "queued_after_stop", "after_start")}
        out["control"]["smtp_source"].pop("stderr", None)
    b.res["results"]["memcg"] = out


def one(b, limit_mib):
    """One run; limit_mib None: a group without a limit (the control)."""
    a = b.a
    fill = b.spoolfill()
    out = {"limit_mib": limit_mib, "count": a.memcg_count,
           "send": a.memcg_send, "sessions": a.memcg_sessions,
           "size": a.memcg_size}
    sink = R.make_sink(b, "sink-memcg")
    mt = R.Mtad(b, "mtad-memcg", ADDR_MTAD_MEMCG, relayhost="[%s]:%d" % (
        sink.addr, sink.port))
    listen = http_port(mt.conf)
    data = os.path.join(mt.spool, "data.mdb")
    if os.path.exists(mt.spool):
        shutil.rmtree(mt.spool)
    r = R.sh([fill, mt.spool, "fill", str(a.memcg_count), str(a.scale_batch),
              str(a.scale_body)])
    if r.returncode != 0:
        raise RuntimeError("spoolfill: %s" % r.stderr)
    out["fill"] = json.loads(r.stdout)
    out["data_mdb_bytes_start"] = os.path.getsize(data)
    R.log("memcg: %d queued, data.mdb %.0f MB, limit %s MiB" % (
        a.memcg_count, out["data_mdb_bytes_start"] / 1e6, limit_mib or "no"))
    chown_spool(mt.spool)
    R.drop_file_cache(data)

    cg = Cgroup("mtad-bench-%d" % os.getpid(),
                (limit_mib << 20) if limit_mib else -1)
    out["cgroup"] = cg.path
    sink.start()
    try:
        t0 = time.monotonic()
        logf = os.path.join(mt.dir, "mtad.log")
        out["log"] = a.memcg_log
        if a.memcg_log == "pipe":
            # as a container's stderr: a pipe to a writer outside the group
            fifo = os.path.join(mt.dir, "mtad.log.fifo")
            if not os.path.exists(fifo):
                os.mkfifo(fifo)
            b.procs.start("memcg-log", ["/bin/cat", fifo], stdout=logf)
            logf = fifo
        mt.proc = b.procs.start(mt.name, cg.argv([b.mtad, "-c", mt.conf]),
                                stderr=logf)
        g = R.wait_greeting(mt.addr, mt.port, 120, mt.proc)
        if g is None:
            raise RuntimeError("mtad did not start in the cgroup; see %s"
                               % os.path.join(mt.dir, "mtad.log"))
        out["start_to_220_s"] = round(time.monotonic() - t0, 3)
        pid = mt.proc.pid
        inside = cg.read("cgroup.procs").split()
        if str(pid) not in inside:
            raise RuntimeError("mtad (pid %d) is not in %s" % (pid, cg.path))
        alive = lambda: mt.proc.poll() is None
        smp = Sampler(cg, pid, sink, listen, a.memcg_interval)
        s0 = smp.sample("start", True)
        out["after_start"] = {k: s0[k] for k in ("usage", "VmRSS", "RssAnon", "RssFile")}

        # 1: delivery alone
        smp.run_for(a.memcg_settle, "deliver", alive)
        s1 = smp.sample("deliver", True)
        # 2: smtp-source while it delivers
        argv = R.smtp_source_argv(mt.addr, mt.port, a.memcg_send, a.memcg_size, 1,
                                  a.memcg_sessions, False)
        errf = os.path.join(mt.dir, "smtp-source.err")
        ts = time.monotonic()
        with open(errf, "wb") as ef:
            src = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=ef,
                                   stdin=subprocess.DEVNULL)
            while src.poll() is None:
                if not alive() or time.monotonic() - ts > 900:
                    src.kill()
                    src.wait()
                    break
                smp.sample("accept+deliver")
                time.sleep(a.memcg_interval)
        send_s = time.monotonic() - ts
        with open(errf, errors="replace") as ef:
            src_err = ef.read()
        s2 = smp.sample("accept+deliver", True)
        # 3: delivery alone again
        smp.run_for(a.memcg_after, "deliver", alive)
        s3 = smp.sample("deliver", True)
        alive_end = alive()
        st = cg.kv("memory.stat")
        oom = cg.kv("memory.oom_control")
        out["cgroup_end"] = {
            "max_usage_in_bytes": cg.num("memory.max_usage_in_bytes"),
            "failcnt": cg.num("memory.failcnt"),
            "kmem_max_usage_in_bytes": cg.num("memory.kmem.max_usage_in_bytes"),
            "oom_control": oom,
            "stat": {k: st[k] for k in STAT_KEYS if k in st}}
        ps = R.read_status(pid)
        out["mtad_status_end"] = ps
        out["VmHWM"] = ps.get("VmHWM", 0)
        out["peaks_sampled"] = smp.peak
        out["smtp_source"] = {"rc": src.returncode, "seconds": round(send_s, 2),
                              "rate": round(a.memcg_send / send_s, 1),
                              "stderr": src_err[-2000:]}
        out["phases"] = {
            "deliver_before": {"seconds": a.memcg_settle,
                               "delivered": s1["delivered"] - s0["delivered"],
                               "queued_at_start": s0["queued"]},
            "accept_and_deliver": {"seconds": round(send_s, 2),
                                   "delivered": s2["delivered"] - s1["delivered"],
                                   "queued_at_start": s1["queued"]},
            "deliver_after": {"seconds": a.memcg_after,
                              "delivered": s3["delivered"] - s2["delivered"],
                              "queued_at_start": s2["queued"]}}
        for k, v in out["phases"].items():
            v["rate"] = round(v["delivered"] / v["seconds"], 1) if v["seconds"] else None
        out["queue_gauge"] = {"start": s0["queued"], "end": s3["queued"]}
        out["alive_to_end"] = alive_end
        rc = mt.stop()
        out["mtad_exit"] = rc
        b.procs.stop("memcg-log")
        time.sleep(1)       # the sink's counter line of the last session
        out["delivered"] = sink.messages()
        dt, got, text = mt.summary()
        out["queued_after_stop"] = got
        out["data_mdb_bytes_end"] = os.path.getsize(data)
        # log level info; with --memcg-log file its page cache is charged
        # to the group too
        out["mtad_log_bytes"] = os.path.getsize(os.path.join(mt.dir, "mtad.log"))
        out["series"] = smp.series[::max(1, len(smp.series) // 60)]
    finally:
        mt.stop()
        b.procs.stop("memcg-log")
        sink.stop()
        out["cgroup_removed"] = cg.remove()
    shutil.rmtree(mt.spool, ignore_errors=True)
    return out


def checks(o):
    lim = o["limit_mib"] << 20
    ce = o["cgroup_end"]
    oomk = ce["oom_control"].get("oom_kill", 0)
    src = o["smtp_source"]
    bad = [l for l in src["stderr"].splitlines()
           if re.search(r"warning|fatal|error", l)]
    total = o["count"] + o["send"]
    have = (o["delivered"] or 0) + (o["queued_after_stop"] or 0)
    ph = o["phases"]
    qs, qe = o["queue_gauge"]["start"], o["queued_after_stop"]
    return [
        ["no OOM kill, mtad alive to the end",
         "oom_kill %s, alive %s" % (oomk, o["alive_to_end"]),
         R.verdict(oomk == 0 and o["alive_to_end"])],
        ["every smtp-source message answered 250",
         "rc %s, %d error lines" % (src["rc"], len(bad)),
         R.verdict(src["rc"] == 0 and not bad)],
        ["none lost: delivered + queued >= filled + sent",
         "%d + %d = %d vs %d" % (o["delivered"], qe or 0, have, total),
         R.verdict(have >= total)],
        ["kept delivering in every phase (while mail was queued)",
         "/".join("%d" % v["delivered"] for v in ph.values()),
         R.verdict(all(v["delivered"] > 0 or v["queued_at_start"] == 0
                       for v in ph.values()))],
        ["queue fell over the run",
         "%s -> %s" % (qs, qe), R.verdict(qs is not None and qe is not None and qe < qs)],
        ["page cache reclaimed: limit hit, usage <= limit < data.mdb",
         "failcnt %d, max %.1f MiB, data.mdb %.0f MiB" % (
             ce["failcnt"], ce["max_usage_in_bytes"] / 2**20,
             o["data_mdb_bytes_end"] / 2**20),
         R.verdict(ce["failcnt"] > 0 and ce["max_usage_in_bytes"] <= lim and
                   o["data_mdb_bytes_end"] > lim)],
    ]


def table_lines(res):
    M = res.get("memcg")
    if not M:
        return []
    ce = M["cgroup_end"]
    st = ce["stat"]
    pk = M["peaks_sampled"]
    mib = lambda x: "%.1f MiB" % ((x or 0) / 2**20)
    L = ["", "memcg: mtad in a %d MiB memory cgroup (v1), %d queued, %d sent by "
         "smtp-source while it delivers, log to a %s" % (
             M["limit_mib"], M["count"], M["send"], M.get("log", "file")),
         "  data.mdb                     %s at start, %s at end" % (
             mib(M["data_mdb_bytes_start"]), mib(M["data_mdb_bytes_end"])),
         "  cgroup peak usage            %s (failcnt %d, oom_kill %s)" % (
             mib(ce["max_usage_in_bytes"]), ce["failcnt"],
             ce["oom_control"].get("oom_kill", "?")),
         "  peak RSS (VmHWM)             %s; sampled peaks: VmRSS %s, RssAnon %s, "
         "RssFile %s" % (mib(M["VmHWM"]), mib(pk["VmRSS"]), mib(pk["RssAnon"]),
                         mib(pk["RssFile"])),
         "  anonymous (memory.stat rss)  peak %s, at end %s; RssAnon after start %s" % (
             mib(pk["rss"]), mib(st.get("rss")), mib(M["after_start"]["RssAnon"])),
         "  page cache (memory.stat)     peak %s cache, %s mapped_file; at end %s / %s; "
         "pgmajfault %s" % (mib(pk["cache"]), mib(pk["mapped_file"]),
                            mib(st.get("cache")), mib(st.get("mapped_file")),
                            st.get("pgmajfault", "?")),
         "  smtp-source                  %d in %.1f s (%.0f msg/s) while delivering" % (
             M["send"], M["smtp_source"]["seconds"], M["smtp_source"]["rate"]),
         "  delivered msg/s              %s (alone / while accepting / alone)" % (
             " / ".join("%.0f" % (v["rate"] or 0) for v in M["phases"].values())),
         "  delivered, queued after stop %d, %s" % (M["delivered"],
                                                    M["queued_after_stop"])]
    C = M.get("control")
    if C:
        L.append("  control, no limit            peak usage %s, VmHWM %s, anon %s; "
                 "smtp-source %.0f msg/s; delivered msg/s %s" % (
                     mib(C["cgroup_end"]["max_usage_in_bytes"]), mib(C["VmHWM"]),
                     mib(C["peaks_sampled"]["rss"]), C["smtp_source"]["rate"],
                     " / ".join("%.0f" % (v["rate"] or 0)
                                for v in C["phases"].values())))
    for c in M.get("checks", []):
        L.append("  %-52s %-30s %s" % tuple(c))
    return L


def targets(res):
    M = res.get("memcg")
    if not M:
        return []
    ok = all(c[2] == "met" for c in M.get("checks", []))
    return [("%d queued in a %d MiB cgroup: accepts, delivers, no OOM" % (
        M["count"], M["limit_mib"]),
        "VmHWM %.0f MiB, anon %.0f MiB" % (M["VmHWM"] / 2**20,
                                           M["peaks_sampled"]["rss"] / 2**20),
        R.verdict(ok))]
