#!/usr/bin/python3
"""Count the results of `make test` (tests/run_all.sh) and print one line:
'N passed, N failed'. A build step that failed counts as one failed test."""
import json
import os
import sys
import xml.etree.ElementTree as ET

res = sys.argv[1] if len(sys.argv) > 1 else "build/test-results"
passed = failed = 0
if not os.path.isdir(res):
    print("0 passed, 1 failed")
    sys.exit(1)
for name in sorted(os.listdir(res)):
    path = os.path.join(res, name)
    if name.startswith("meson-") and name.endswith(".json"):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                r = json.loads(line).get("result")
                if r in ("OK", "EXPECTEDFAIL"):
                    passed += 1
                elif r != "SKIP":
                    failed += 1
    elif name.endswith(".xml"):
        for case in ET.parse(path).getroot().iter("testcase"):
            tags = {c.tag for c in case}
            if "failure" in tags or "error" in tags:
                failed += 1
            elif "skipped" not in tags:
                passed += 1
    elif name == "failed_steps":
        with open(path) as f:
            failed += sum(1 for l in f if l.strip())
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed or passed == 0 else 0)
