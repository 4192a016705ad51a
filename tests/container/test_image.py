"""The container image (Containerfile, issue 13 item 1), built and run for
real: buildah builds the Containerfile with --isolation chroot from base
images that mmdebstrap makes from the Debian mirror (no registry, no
container daemon), then mtad runs in the image as its non-root user, the
image's own smoke test (mtad-smoke) sends a message over SMTP and finds it
with `mtaq --json`, and the image's health check (mtad-healthcheck) is
checked against a running and a stopped mtad.

Skipped, with the reason, only when buildah or mmdebstrap is missing or the
Debian mirror cannot be reached.

Caches (MTAD_IMAGE_CACHE, default /var/tmp/mtad-image): the base tarballs
(rebuilt when older than a week) and buildah's storage with the layer cache
(so a rebuild with unchanged sources takes seconds, and with changed
sources only recompiles).  MTAD_IMAGE_MIRROR names another Debian mirror
(default: mmdebstrap's, deb.debian.org with updates and security).
"""
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("MTAD_IMAGE_CACHE", "/var/tmp/mtad-image")
MIRROR = os.environ.get("MTAD_IMAGE_MIRROR", "")
SUITE = "bookworm"
MAX_AGE = 7 * 86400
IMAGE = "localhost/mtad:test"
BASES = {  # FROM name -> tarball
    "docker.io/library/debian:bookworm": "bookworm-minbase.tar",
    "docker.io/library/debian:bookworm-slim": "bookworm-slim.tar",
}
# What the official -slim images leave out (dpkg path-exclude, as there).
SLIM_EXCLUDE = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
SLIM_DROP = ("usr/share/doc/", "usr/share/man/", "usr/share/groff/",
             "usr/share/info/", "usr/share/lintian/", "usr/share/linda/",
             "usr/share/locale/")


def log(msg):
    print("[container] %s" % msg, flush=True)


def run(cmd, timeout=600, check=True, **kw):
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s: exit %d after %.0fs\n%s" % (
            " ".join(cmd), p.returncode, time.monotonic() - t0, p.stdout[-6000:]))
    return p


def mirror_url():
    return (MIRROR or "http://deb.debian.org/debian").rstrip("/")


def unavailable():
    for tool in ("buildah", "mmdebstrap"):
        if shutil.which(tool) is None:
            return "%s is not installed (Debian package %s)" % (tool, tool)
    url = "%s/dists/%s/InRelease" % (mirror_url(), SUITE)
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            r.read(64)
    except Exception as e:  # noqa: BLE001 - any failure means no mirror
        return "Debian mirror unreachable (%s: %s)" % (url, e)
    return None


def fresh(path):
    try:
        return time.time() - os.stat(path).st_mtime < MAX_AGE
    except FileNotFoundError:
        return False


def make_minbase(path):
    tmp = path + ".tmp"
    cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
           "--dpkgopt=force-unsafe-io", "--aptopt=Acquire::Retries \"3\"",
           SUITE, tmp]
    if MIRROR:
        cmd.append(MIRROR)
    t0 = time.monotonic()
    run(cmd, timeout=1200)
    os.replace(tmp, path)
    log("made %s in %.0fs" % (path, time.monotonic() - t0))


def make_slim(src, path):
    """bookworm-slim = minbase without docs, man pages and locales, with the
    dpkg excludes that keep them out of later installs (as the official
    debian:bookworm-slim)."""
    tmp = path + ".tmp"
    with tarfile.open(src) as tin, tarfile.open(tmp, "w") as tout:
        for m in tin:
            name = m.name[2:] if m.name.startswith("./") else m.name
            if name.startswith(SLIM_DROP) and not (
                    name.endswith("/copyright")
                    or name == "usr/share/locale/locale.alias"
                    or name.rstrip("/") in [d.rstrip("/") for d in SLIM_DROP]):
                continue
            tout.addfile(m, tin.extractfile(m) if m.isreg() else None)
        data = SLIM_EXCLUDE.encode()
        ti = tarfile.TarInfo("./etc/dpkg/dpkg.cfg.d/docker")
        ti.size, ti.mode, ti.mtime = len(data), 0o644, int(time.time())
        tout.addfile(ti, io.BytesIO(data))
    os.replace(tmp, path)


class Buildah:
    def __init__(self, driver):
        self.driver = driver
        # runroot on /run (cleared at boot, as buildah expects), one per
        # cache directory
        tag = hashlib.sha1(os.path.abspath(CACHE).encode()).hexdigest()[:8]
        self.args = ["buildah", "--root", os.path.join(CACHE, "storage-" + driver),
                     "--runroot", "/run/mtad-image-%s-%s" % (tag, driver),
                     "--storage-driver", driver]

    def __call__(self, *args, **kw):
        return run(self.args + list(args), **kw)


def pick_storage():
    """overlay where the kernel lets us mount it, vfs otherwise."""
    want = os.environ.get("STORAGE_DRIVER")
    for driver in ([want] if want else ["overlay", "vfs"]):
        b = Buildah(driver)
        if b("images", check=False, timeout=60).returncode == 0:
            return b
    raise AssertionError("buildah: no usable storage driver")


def import_base(b, name, tarball):
    """Tag the tarball as NAME (what the FROM lines say) unless the store
    already has NAME from this very tarball."""
    st = os.stat(tarball)
    stamp = "%d-%d" % (st.st_mtime, st.st_size)
    p = b("inspect", "--type", "image", "--format",
          '{{index .ImageAnnotations "org.mtad.base-tarball"}}', name,
          check=False, timeout=60)
    if p.returncode == 0 and p.stdout.strip() == stamp:
        return
    ctr = b("from", "--pull=never", "scratch").stdout.strip().splitlines()[-1]
    try:
        b("add", ctr, tarball, "/", timeout=600)
        b("config", "--cmd", "/bin/bash", "--env",
          "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "--annotation", "org.mtad.base-tarball=" + stamp, ctr)
        p = b("commit", "--rm", ctr, name, timeout=600, check=False)
        if p.returncode != 0 and "remount /" in p.stdout:
            # buildah unpacks layers with a chroot of its own that remounts
            # /: impossible where / is not a mount point (the test itself
            # runs inside a plain chroot, e.g. fresh-root-test)
            pytest.skip("buildah cannot unpack layers here (/ is not a "
                        "mount point: running inside a chroot): "
                        + p.stdout.strip().splitlines()[-1][:200])
        if p.returncode != 0:
            raise AssertionError("buildah commit: exit %d\n%s"
                                 % (p.returncode, p.stdout[-6000:]))
        ctr = None
    finally:
        if ctr:
            b("rm", ctr, check=False)
    log("imported %s as %s" % (tarball, name))


@pytest.fixture(scope="module")
def image():
    why = unavailable()
    if why:
        print("SKIP container image test: " + why)
        pytest.skip(why)
    os.makedirs(CACHE, exist_ok=True)
    t0 = time.monotonic()
    with open(os.path.join(CACHE, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time on this host
        minbase = os.path.join(CACHE, BASES["docker.io/library/debian:bookworm"])
        slim = os.path.join(CACHE, BASES["docker.io/library/debian:bookworm-slim"])
        if not fresh(minbase):
            make_minbase(minbase)
        if not fresh(slim) or os.stat(slim).st_mtime < os.stat(minbase).st_mtime:
            make_slim(minbase, slim)
        b = pick_storage()
        for name, tar in BASES.items():
            import_base(b, name, os.path.join(CACHE, tar))
        t1 = time.monotonic()
        build = ["build", "--isolation", "chroot", "--pull=never",
                 "--format", "docker", "-f", os.path.join(ROOT, "Containerfile")]
        if b.driver == "overlay":
            # Layer cache: the build stage tagged on its own, so that
            # pruning keeps its layers (the toolchain install) for the next
            # build; the full build then reuses them.  Not with vfs, where
            # every cached step is a full copy of the tree (gigabytes).
            build.append("--layers")
            b(*build, "--target", "build", "-t", IMAGE + "-build", ROOT,
              timeout=1500)
        b(*build, "-t", IMAGE, ROOT, timeout=1500)
        # what earlier builds left untagged
        b("rmi", "--prune", check=False, timeout=300)
        log("bases ready in %.0fs, image built in %.0fs (storage %s)"
            % (t1 - t0, time.monotonic() - t1, b.driver))
        yield b
        fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def container(image):
    ctr = image("from", "--pull=never", IMAGE).stdout.strip().splitlines()[-1]
    yield ctr
    image("rm", ctr, check=False)


def crun(b, ctr, script, user=None, timeout=300):
    args = ["run", "--isolation", "chroot"]
    if user:
        args += ["--user", user]
    return b(*args, ctr, "--", "bash", "-c", script, check=False,
             timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_config(image):
    """Non-root user, volume, port, health check, command, as the image
    declares them."""
    cfg = json.loads(image("inspect", "--type", "image",
                           IMAGE).stdout)["Docker"]["config"]
    assert cfg["User"] == "10025:10025"
    assert "/var/spool/mtad" in cfg["Volumes"]
    assert "2525/tcp" in cfg["ExposedPorts"]
    assert cfg["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/mtad-healthcheck"]
    assert cfg["Cmd"] == ["/usr/local/sbin/mtad", "-c", "/etc/mtad/mtad.conf"]
    assert "MTAD_CONFIG=/etc/mtad/mtad.conf" in cfg["Env"]


def test_runs_as_non_root_with_runtime_libraries_only(image, container):
    """The image's default user is mtad (not root), owning the spool; the
    run stage holds no compiler and no -dev package."""
    p = crun(image, container,
             "id -u; id -un; stat -c '%U %a' /var/spool/mtad; "
             "command -v gcc cc meson || echo no-toolchain; "
             "dpkg-query -W -f '${Package}\\n' | grep -c -- '-dev$' || true; "
             "ls /usr/share/doc | wc -l; ls /usr/share/man 2>/dev/null | wc -l")
    assert p.returncode == 0, p.stdout
    lines = p.stdout.split()
    assert lines[0] != "0" and lines[0] == "10025", p.stdout
    assert lines[1] == "mtad", p.stdout
    assert lines[2:4] == ["mtad", "750"], p.stdout
    assert lines[4] == "no-toolchain", p.stdout
    assert lines[5] == "0", p.stdout  # no -dev packages
    assert lines[7] == "0", p.stdout  # slim: no man pages


def test_smoke_and_healthcheck(image, container):
    """mtad started in the image as user mtad, configured by the image's
    file plus MTAD_* environment: the health check fails before it listens,
    passes once it greets, mtad-smoke's message is in the spool (mtaq
    --json), the log is on stderr, SIGTERM ends it with 0, and afterwards
    the health check fails again."""
    port = free_port()
    hport = free_port()
    script = r"""
set -u
export MTAD_SERVER_LISTEN=127.0.0.1:%(port)d MTAD_LOG_LEVEL=info
export MTAD_HTTP_LISTEN=127.0.0.1:%(hport)d
id -u >/tmp/uid
if mtad-healthcheck 2>/tmp/hc-before; then echo HC_BEFORE=0; else echo HC_BEFORE=1; fi
mtad -c /etc/mtad/mtad.conf 2>/tmp/mtad.log &
pid=$!
ok=
for i in $(seq 1 100); do
	if mtad-healthcheck 2>/tmp/hc; then ok=1; break; fi
	sleep 0.2
done
echo HC_RUNNING=${ok:-no}
cat /tmp/hc
if mtad-healthcheck --ready 2>/tmp/rd; then echo READY=0; else echo READY=1; fi
echo ==readyz; cat /tmp/rd; echo ==end
mtad-smoke 127.0.0.1:%(port)d; echo SMOKE_RC=$?
mtaq --json >/tmp/q.json; echo MTAQ_RC=$?
ls /var/spool/mtad
kill -TERM $pid; wait $pid; echo MTAD_RC=$?
if mtad-healthcheck 2>/tmp/hc-after; then echo HC_AFTER=0; else echo HC_AFTER=1; fi
echo UID=$(cat /tmp/uid)
echo ==log; cat /tmp/mtad.log
echo ==queue; cat /tmp/q.json; echo
echo ==hc-after; cat /tmp/hc-after
""" % {"port": port, "hport": hport}
    p = crun(image, container, script, user="mtad")
    out = p.stdout
    print(out)
    assert p.returncode == 0, out
    assert "HC_BEFORE=1" in out  # nothing listens yet: unhealthy
    assert "HC_RUNNING=1" in out  # GET /healthz -> 200
    # /readyz: 200, or 503 naming what fails (here, without the Internet,
    # usually the DNSSEC self-test)
    rd = out.split("==readyz\n", 1)[1].split("==end", 1)[0]
    assert "READY=0" in out or ("503" in rd and "dnssec:" in rd), out
    assert "UID=10025" in out
    assert "mtad-smoke: ok, queued as " in out
    qid = out.split("mtad-smoke: ok, queued as ", 1)[1].split()[0]
    assert "SMOKE_RC=0" in out and "MTAQ_RC=0" in out
    queue = json.loads(out.split("==queue\n", 1)[1].split("\n", 1)[0])
    msgs = [m for m in queue["messages"] if m["qid"] == qid]
    assert msgs, out
    assert msgs[0]["sender"] == ""
    assert msgs[0]["recipients"][0]["addr"] == "mtad-smoke@smoke.invalid"
    assert "data.mdb" in out  # the spool is in /var/spool/mtad
    assert "MTAD_RC=0" in out  # clean stop on SIGTERM
    assert "HC_AFTER=1" in out and "cannot connect" in out
    log_part = out.split("==log\n", 1)[1].split("==queue", 1)[0]
    assert "event=listen addr=127.0.0.1:%d" % port in log_part
    assert "event=accept" in log_part and "qid=" + qid in log_part
