"""Fixtures for the mtad integration tests (real mtad on loopback).

MTAD_BUILD_DIR selects the build (default /work/main/build); it must hold
mtad, mtaq and mtactl.  Each mtad gets its own 127.0.X.Y address, port and
temporary directory (/tmp/mtit-*: config, spool, log, pid).  The directory
is removed when the test passes and kept (path printed) when it fails.
"""
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

import mtadtest  # noqa: E402


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session", autouse=True)
def daemon_user():
    """Started as root, mtad drops to server.user (default `mtad`): make
    sure that user exists, and remove it afterwards if we created it."""
    created = mtadtest.ensure_daemon_user()
    yield mtadtest.DAEMON_USER
    if created:
        mtadtest.remove_daemon_user()


@pytest.fixture(autouse=True)
def _tmp_path_reachable(request):
    """A test's tmp_path (pytest makes it and its parents 0700) holds
    files mtad reads again on SIGHUP as the dropped user (certificate,
    config, users file): let that user through the directories (0711;
    the files keep their own modes)."""
    if "tmp_path" in request.fixturenames and os.geteuid() == 0:
        p = request.getfixturevalue("tmp_path")
        for d in (p, p.parent, p.parent.parent):
            if str(d).startswith("/tmp/pytest-"):
                os.chmod(d, 0o711)
    yield


@pytest.fixture(scope="session")
def build():
    for prog in (mtadtest.MTAD, mtadtest.MTAQ, mtadtest.MTACTL):
        if not os.access(prog, os.X_OK):
            pytest.skip("%s not built (set MTAD_BUILD_DIR)" % prog)
    return mtadtest.BUILD_DIR


@pytest.fixture(scope="session")
def tls_files():
    d = tempfile.mkdtemp(prefix="mtit-tls-", dir="/tmp")
    os.chmod(d, 0o711)  # the cert is read as root; nothing else needs it
    try:
        yield mtadtest.make_cert(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mtad_factory(build, tls_files, request):
    """make(settings={...}, env={...}, tls=True, start=True) -> Mtad."""
    made = []

    def make(settings=None, env=None, tls=True, start=True):
        d = tempfile.mkdtemp(prefix="mtit-", dir="/tmp")
        m = mtadtest.Mtad(d, settings=settings, env=env,
                          tls=tls_files if tls else None)
        made.append(m)
        if start:
            m.start()
        return m

    yield make

    failed = any(getattr(request.node, "rep_" + w, None) is not None
                 and getattr(request.node, "rep_" + w).failed
                 for w in ("setup", "call"))
    sanitizer = []
    for m in made:
        was_alive = m.alive()
        m.stop()
        report = mtadtest.sanitizer_report(m.log_text())
        if report and not getattr(m, "expect_sanitizer_report", False):
            sanitizer.append("mtad %s (dir %s):\n%s" % (m.addr, m.dir, report))
            failed = True
        if failed:
            print("\n--- mtad %s:%d (dir %s, alive at teardown: %s, exit codes %s) log tail:\n%s"
                  % (m.addr, m.port, m.dir, was_alive, m.exit_codes, m.log_tail(60)))
        else:
            shutil.rmtree(m.dir, ignore_errors=True)
    if sanitizer:
        pytest.fail("sanitizer report in the mtad log:\n" + "\n".join(sanitizer),
                    pytrace=False)


@pytest.fixture
def mtad(mtad_factory):
    """A running mtad with STARTTLS and default limits."""
    return mtad_factory()
