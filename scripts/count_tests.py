"""Counts meson test results from meson-logs/testlog.json: prints 'passed failed skipped' on
stdout and, on stderr, one line per skipped test with its reason (the last line it printed)."""
import json
import sys

passed = failed = skipped = 0
with open(sys.argv[1], encoding="utf-8") as log:
    for line in log:
        if not line.strip():
            continue
        test = json.loads(line)
        result = test["result"]
        if result in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif result == "SKIP":
            skipped += 1
            said = [s for s in (test.get("stdout") or "").splitlines() if s.strip()]
            reason = said[-1].strip() if said else "(it printed no reason)"
            print(f"skipped {test['name']}: {reason}", file=sys.stderr)
        else:
            failed += 1
print(passed, failed, skipped)
