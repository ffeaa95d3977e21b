#!/usr/bin/env python3
"""Compare fresh Autobahn|Testsuite results against autobahn/expected-results.json.

usage: compare.py EXPECTED.json SIDE AGENT REPORT_DIR [--update]

SIDE is "server" or "client"; AGENT the agent name used in the run (e.g.
storm-std). Every case in the run is checked against the expected behaviour
of that side and agent:
  - any FAILED case fails the comparison;
  - a case worse than expected (OK > NON-STRICT > INFORMATIONAL >
    UNIMPLEMENTED > FAILED) fails it, and so does a changed closing behaviour;
  - a case better than expected is reported, so the expectation can be raised
    with --update.
--update writes the run's results into EXPECTED.json instead of comparing.
Exit status 0 when the run matches (or is better), 1 otherwise, 2 on usage
or missing reports. stdlib only.
"""
import json
import os
import sys

RANK = {"FAILED": 0, "UNIMPLEMENTED": 1, "INFORMATIONAL": 2, "NON-STRICT": 3, "OK": 4}


def case_key(cid):
    return tuple(int(x) for x in cid.split("."))


def main(argv):
    update = "--update" in argv
    args = [a for a in argv if a != "--update"]
    if len(args) != 4 or args[1] not in ("server", "client"):
        print(__doc__, file=sys.stderr)
        return 2
    expected_path, side, agent, report_dir = args
    index_path = os.path.join(report_dir, "index.json")
    if not os.path.isfile(index_path):
        print(f"compare: no report at {index_path}", file=sys.stderr)
        return 2
    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    if agent not in index:
        print(f"compare: agent {agent!r} not in {index_path} (has {sorted(index)})", file=sys.stderr)
        return 2
    run = {cid: {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"]} for cid, r in index[agent].items()}

    expected = {}
    if os.path.isfile(expected_path):
        with open(expected_path, encoding="utf-8") as f:
            expected = json.load(f)
    if update:
        cases = expected.setdefault(side, {}).setdefault(agent, {})
        cases.update(run)
        expected[side][agent] = dict(sorted(cases.items(), key=lambda kv: case_key(kv[0])))
        with open(expected_path, "w", encoding="utf-8") as f:
            json.dump(expected, f, indent=1, sort_keys=False)
            f.write("\n")
        print(f"compare: wrote {len(run)} {side} cases for {agent} into {expected_path}")
        return 0

    want = expected.get(side, {}).get(agent)
    if want is None:
        print(f"compare: {expected_path} has no {side} results for {agent}", file=sys.stderr)
        return 2
    worse, better, missing = [], [], []
    failed = sorted((c for c, r in run.items() if r["behavior"] == "FAILED"), key=case_key)
    for cid in sorted(run, key=case_key):
        got = run[cid]
        exp = want.get(cid)
        if exp is None:
            missing.append(cid)
            continue
        g, e = RANK.get(got["behavior"], -1), RANK.get(exp["behavior"], -1)
        if g < e or got["behaviorClose"] != exp["behaviorClose"] and RANK.get(got["behaviorClose"], -1) < RANK.get(exp["behaviorClose"], -1):
            worse.append(f"{cid}: {got['behavior']}/{got['behaviorClose']} (expected {exp['behavior']}/{exp['behaviorClose']})")
        elif g > e:
            better.append(f"{cid}: {got['behavior']} (expected {exp['behavior']})")
    print(f"compare: {side} {agent}: {len(run)} cases, {len(failed)} FAILED, {len(worse)} worse, {len(better)} better, {len(missing)} without expectation")
    for line in worse:
        print("  worse  " + line)
    for line in better:
        print("  better " + line)
    if missing:
        print("  no expectation for: " + " ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if failed:
        print("  FAILED: " + " ".join(failed))
    return 1 if failed or worse or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
