#!/usr/bin/env python3
"""Paired bootstrap 95% intervals of test-split differences for a finished job: M_best and M_opt
against the teacher, every placement of the comparison against greedy. Reads <job>/report.json
and the per-example values the job stored in <job>/eval/test/.

    python3 tools/placement_intervals.py out/jobs/demo-recall
"""
import json
import random
import sys


def per_example(job, layers):
    cid = "linear_" + "_".join(map(str, layers)) if layers else "linear_none"
    with open(f"{job}/eval/test/{cid}.json") as f:
        return json.load(f)["per_example"]


def interval(a, b, samples=2000, seed=0):
    """Mean of a - b and its percentile bootstrap 95% interval (paired resampling)."""
    rng = random.Random(seed)
    d = [x - y for x, y in zip(a, b)]
    means = sorted(sum(d[rng.randrange(len(d))] for _ in d) / len(d) for _ in range(samples))
    return sum(d) / len(d), means[int(0.025 * samples)], means[int(0.975 * samples)]


def main():
    job = sys.argv[1]
    with open(job + "/report.json") as f:
        report = json.load(f)
    teacher = per_example(job, [])
    print(f"test examples: {len(teacher)}; stop: {report['search']['stop_reason']}")
    for m in report["models"]:
        line = f"{m['name']:8s} {str(m['linear_layers']):20s} validation {m['validation']:.4f} test {m['test']:.4f}"
        if m["linear_layers"]:
            d = interval(per_example(job, m["linear_layers"]), teacher)
            line += f"  minus teacher {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"
        print(line)
    placements = report.get("placements") or []
    if placements:
        greedy = per_example(job, placements[0]["linear_layers"])
        for p in placements:
            d = interval(per_example(job, p["linear_layers"]), greedy)
            print(f"{p['name']:9s} {str(p['linear_layers']):20s} test {p['test']:.4f}  "
                  f"minus greedy {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]")
    print("trajectory:", [(t["linear_layers"], round(t["score"], 4))
                          for t in report["search"]["trajectory"]])


if __name__ == "__main__":
    main()
