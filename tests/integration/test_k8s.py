"""Issue 13 item 5: deploy/kubernetes/ parses, and every key, MTAD_*
variable, port and path it uses exists in mtad.

The ConfigMap's mtad.conf is loaded by the real `mtad --check-config` with
the StatefulSet's MTAD_* environment (the Secret's files replaced by test
files at the same names under a temporary directory), and the ports and
paths of the effective configuration are compared with the manifests.
"""
import glob
import os
import subprocess
import sys

import pytest

yaml = pytest.importorskip("yaml", reason="python3-yaml (Debian) not installed")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
KDIR = os.path.join(ROOT, "deploy", "kubernetes")
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "lab"))

import mtadtest  # noqa: E402
from mtadtest import clean_env, make_cert, parse_ini  # noqa: E402


def docs():
    out = []
    for path in sorted(glob.glob(os.path.join(KDIR, "*.yaml"))):
        with open(path) as f:
            for d in yaml.safe_load_all(f):
                if d is not None:
                    out.append((os.path.basename(path), d))
    return out


def one(kind, name=None):
    found = [d for _, d in docs() if d["kind"] == kind and
             (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, found)
    return found[0]


def test_manifests_parse():
    kinds = sorted(d["kind"] for _, d in docs())
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Secret", "Service",
                     "Service", "StatefulSet"], kinds
    for fn, d in docs():
        assert d.get("apiVersion") and d["metadata"].get("name"), fn


def container():
    sts = one("StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return sts, c


def mount_of(c, volume):
    (m,) = [m for m in c["volumeMounts"] if m["name"] == volume]
    return m


@pytest.fixture(scope="module")
def effective(tmp_path_factory):
    """mtad --check-config over the ConfigMap's file with the StatefulSet's
    MTAD_* environment; secret paths point at test files."""
    tmp = str(tmp_path_factory.mktemp("k8s"))
    sts, c = container()
    secret_dir = mount_of(c, "secret")["mountPath"]
    spool_dir = mount_of(c, "spool")["mountPath"]
    conf = one("ConfigMap")["data"]["mtad.conf"]
    # what the Secret holds, made here under the same names
    sec = one("Secret")
    fake = os.path.join(tmp, "secret")
    os.makedirs(fake)
    cert, key = make_cert(fake)
    os.rename(cert, os.path.join(fake, "tls.crt"))
    os.rename(key, os.path.join(fake, "tls.key"))
    r = subprocess.run([os.path.join(mtadtest.BUILD_DIR, "mtactl"), "passwd",
                        "app1", "--file", os.path.join(fake, "users")],
                       input=b"pw\n", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=clean_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    assert set(sec["stringData"]) == {"tls.crt", "tls.key", "users"}
    assert secret_dir + "/" in conf and spool_dir in conf
    conf = conf.replace(secret_dir + "/", fake + "/")
    conf = conf.replace(spool_dir, os.path.join(tmp, "spool"))
    path = os.path.join(tmp, "mtad.conf")
    with open(path, "w") as f:
        f.write(conf)
    env = {e["name"]: e.get("value", "") for e in c.get("env", [])
           if e["name"].startswith("MTAD_")}
    r = subprocess.run([mtadtest.MTAD, "-c", path, "--check-config"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=clean_env(env), timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    cfg = parse_ini(r.stdout.decode())
    return {"cfg": cfg, "secret_dir": secret_dir, "spool_dir": spool_dir,
            "fake": fake, "tmp": tmp, "env": env}


def port_of(listen):
    return int(listen.split(",")[0].strip().rsplit(":", 1)[1])


def test_ports_match_config(effective):
    cfg = effective["cfg"]
    _, c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "smtp": port_of(cfg["server"]["listen"]),
        "submission": port_of(cfg["submission"]["listen"]),
        "submissions": port_of(cfg["submissions"]["listen"]),
        "http": port_of(cfg["http"]["listen"]),
    }, (ports, cfg)
    # every Service targets a named container port
    for _, d in docs():
        if d["kind"] == "Service":
            for p in d["spec"]["ports"]:
                assert p["targetPort"] in ports, p
            assert d["spec"]["selector"] == \
                one("StatefulSet")["spec"]["template"]["metadata"]["labels"]


def test_env_keys_exist(effective):
    """Every MTAD_* variable names a key (mtad refuses unknown ones: the
    check-config above passed) and its value is in force."""
    cfg = effective["cfg"]
    assert effective["env"], "no MTAD_* variables in the StatefulSet"
    for name, value in effective["env"].items():
        sec, key = None, None
        rest = name[len("MTAD_"):].lower()
        for s in cfg:
            if rest.startswith(s + "_") and rest[len(s) + 1:] in cfg[s]:
                sec, key = s, rest[len(s) + 1:]
        assert sec is not None, name
        assert cfg[sec][key] == value, (name, cfg[sec][key])


def test_probes_paths_and_grace(effective):
    cfg = effective["cfg"]
    sts, c = container()
    spec = sts["spec"]["template"]["spec"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http", probe
    grace = int(cfg["server"]["shutdown_grace"].rstrip("s"))
    assert grace > 0
    assert spec["terminationGracePeriodSeconds"] > grace + 10, \
        (spec["terminationGracePeriodSeconds"], grace)
    # non-root, the image's uid
    assert spec["securityContext"]["runAsUser"] == 10025
    assert spec["securityContext"]["runAsNonRoot"] is True
    # one spool volume per pod, mounted where spool.dir points
    (vct,) = sts["spec"]["volumeClaimTemplates"]
    assert vct["metadata"]["name"] == "spool"
    assert cfg["spool"]["dir"] == os.path.join(effective["tmp"], "spool")
    # config and credentials from the ConfigMap and the Secret
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["config"]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert vols["secret"]["secret"]["secretName"] == one("Secret")["metadata"]["name"]
    assert mount_of(c, "config")["mountPath"] == c["args"][-1]
    fake = effective["fake"]
    for k in (("server", "tls_cert"), ("server", "tls_key"),
              ("auth", "users_file")):
        assert os.path.dirname(cfg[k[0]][k[1]]) == fake, k
    # the preStop hook evacuates with the real mtactl syntax
    cmd = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    assert "mtactl -c " + c["args"][-1] + " evacuate --to" in cmd
    # the PodDisruptionBudget selects the pods
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == \
        sts["spec"]["template"]["metadata"]["labels"]


def test_container_image_matches():
    """The StatefulSet runs the Containerfile's image: its binary path and
    its non-root uid."""
    _, c = container()
    with open(os.path.join(ROOT, "Containerfile")) as f:
        cf = f.read()
    assert c["args"][0] in cf
    assert "10025" in cf
