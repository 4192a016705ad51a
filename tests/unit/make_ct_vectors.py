#!/usr/bin/python3
"""Writes the Certificate Transparency vectors of tests/unit/test_ct.c
(and the seeds of tests/fuzz/corpus/ct_*) into tests/unit/data/ct/:
built with tests/lab/ctlab.py (test logs, real SCTs over the precert
entry).  Run again to renew them; the SCT timestamps are those of the run,
the "future" one a year ahead."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lab"))
import ctlab  # noqa: E402
import sinks  # noqa: E402

out = os.path.join(HERE, "data", "ct")
os.makedirs(out, exist_ok=True)
A = ctlab.CtLog("Test Log A", "Operator One")
B = ctlab.CtLog("Test Log B", "Operator Two")
C = ctlab.CtLog("Test Log C", "Operator One")
R = ctlab.CtLog("Test Log R", "Operator Three", state="retired")
ctlab.write_log_list(os.path.join(out, "loglist.json"), [A, B, C, R])
ca = sinks.make_ca("CT Unit CA")
open(os.path.join(out, "ca.der"), "wb").write(ca.der())
other, _ = ctlab.issue(ca, ["other.test"], scts=None)
future = ctlab._now_ms() + 365 * 86400000
cases = {
    "ok2": [{"log": A}, {"log": B}],
    "one": [{"log": A}],
    "sameop": [{"log": A}, {"log": C}],
    "badsig": [{"log": A, "tamper": True}, {"log": B}],
    "othercert": [{"log": A, "tbs_of": other}, {"log": B}],
    "retired": [{"log": R}, {"log": A}],
    "future": [{"log": A, "ts_ms": future}, {"log": B}],
    "none": None,
}
for name, scts in cases.items():
    ck, tbs = ctlab.issue(ca, ["mx.ct.test"], scts=scts)
    open(os.path.join(out, name + ".der"), "wb").write(ck.der())
    if name == "ok2":
        open(os.path.join(out, "ok2.tbs"), "wb").write(tbs)
