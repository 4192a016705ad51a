"""Configuration: --check-config, errors naming file:line:key, environment
overrides (MTAD_<SECTION>_<KEY>)."""
import re
import subprocess

from mtadtest import MTAD, clean_env, parse_ini, parse_size
from smtpraw import RawSMTP


def _line_of(path, key):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if re.match(r"\s*%s\s*=" % re.escape(key), line):
                return n
    raise AssertionError(key)


def test_check_config_prints_effective_config(mtad_factory):
    mtad = mtad_factory({"server.max_message_size": "2M"}, start=False)
    p = mtad.check_config()
    assert p.returncode == 0, p.stderr
    cfg = parse_ini(p.stdout.decode())
    assert cfg["server"]["listen"] == "%s:%d" % (mtad.addr, mtad.port)
    assert cfg["server"]["hostname"] == "mtad.test"
    assert parse_size(cfg["server"]["max_message_size"]) == 2 * 1024 * 1024
    assert cfg["spool"]["dir"] == mtad.spool
    # defaults are printed too
    assert parse_size(cfg["server"]["max_recipients"]) == 1000
    assert parse_size(cfg["server"]["max_sessions"]) == 1000


def test_bad_value_names_file_line_key(mtad_factory):
    mtad = mtad_factory({"server.max_message_size": "12q"}, start=False)
    line = _line_of(mtad.conf, "max_message_size")
    for argv in ([MTAD, "-c", mtad.conf, "--check-config"], [MTAD, "-c", mtad.conf]):
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=clean_env(), timeout=10)
        err = p.stderr.decode()
        assert p.returncode == 2, (argv, p.returncode, err)
        assert "%s:%d: server.max_message_size" % (mtad.conf, line) in err, err
        assert "12q" in err, err
        assert b"[server]" not in p.stdout
    # it never started listening
    try:
        RawSMTP(mtad.addr, mtad.port, timeout=1).close()
        raise AssertionError("something listens on the port of a bad config")
    except OSError:
        pass


def test_unknown_key_is_an_error(mtad_factory):
    mtad = mtad_factory({"server.no_such_key": "1"}, start=False)
    line = _line_of(mtad.conf, "no_such_key")
    p = mtad.check_config()
    err = p.stderr.decode()
    assert p.returncode == 2, (p.returncode, err)
    assert "server.no_such_key" in err, err
    assert "%s:%d" % (mtad.conf, line) in err, err


def test_unknown_section_is_an_error(mtad_factory):
    mtad = mtad_factory({"bogus.key": "1"}, start=False)
    p = mtad.check_config()
    assert p.returncode == 2 and "bogus" in p.stderr.decode(), p.stderr


def test_env_override_visible_and_applied(mtad_factory):
    """MTAD_SERVER_MAX_MESSAGE_SIZE overrides the file: --check-config
    shows it and the running daemon advertises it in EHLO SIZE."""
    env = {"MTAD_SERVER_MAX_MESSAGE_SIZE": "12345"}
    mtad = mtad_factory({"server.max_message_size": "2M"}, env=env, start=False)
    p = mtad.check_config()
    assert p.returncode == 0, p.stderr
    cfg = parse_ini(p.stdout.decode())
    assert parse_size(cfg["server"]["max_message_size"]) == 12345
    mtad.start()
    c = RawSMTP(mtad.addr, mtad.port)
    c.greeting()
    e = c.ehlo()
    assert "SIZE 12345" in [l[4:] for l in e.lines], e
    c.quit()


def test_bad_env_value_names_variable(mtad_factory):
    mtad = mtad_factory(start=False)
    p = mtad.check_config({"MTAD_SERVER_MAX_SESSIONS": "many"})
    err = p.stderr.decode()
    assert p.returncode == 2, (p.returncode, err)
    assert "MTAD_SERVER_MAX_SESSIONS" in err, err
    assert "many" in err, err
