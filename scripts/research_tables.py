"""docs/results.md's tables (markdown) from `scripts/research.sh`'s outputs: `zoo score`, `eval --folds` (cv/,
cv-oracle/: gaps only on the same question ids), `ablate --folds` (ablation/). It only formats; the tests and
Holm adjustments are llgbm's. `python scripts/research_tables.py [WORKDIR]`; `... WORKDIR --against OTHER` prints
the two worlds' cross-validations side by side instead (per method across the folds, on the same questions)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from llgbm_cli.commands.zoo import across_line
from llgbm_cli.training.methods import TRAINED

GEN, GAPS = tuple(TRAINED), ("accuracy_vs_base", "vs_mean_delta")  # the trained methods; the differences


def f(x, fmt="{:.3f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def pf(x) -> str:  # a p-value: three decimals, or two significant digits below 0.001
    return f(x, "{:.2g}" if x is not None and 0 < x < 1e-3 else "{:.3f}")


def ci(s: dict, key: str, fmt="{:+.3f}") -> str:  # a mean with its interval where it has one
    if s.get(key) is None:
        return "—"
    lo = s.get(f"{key}_low", s.get("low") if key == "diff" else None)
    hi = s.get(f"{key}_high", s.get("high") if key == "diff" else None)
    return fmt.format(s[key]) + ("" if lo is None else f" [{fmt.format(lo)}, {fmt.format(hi)}]")


def load(p: Path, step: str):  # the file's JSON, or None with a note saying what makes it
    return json.loads(p.read_text()) if p.exists() and p.stat().st_size else print(
        f"(no {p}: run `STEPS={step} bash scripts/research.sh`)\n")


def same_ids(a: Path, b: Path, fold: str) -> bool:
    """Both runs scored ``fold`` on the very same questions (stops when they scored other ones)."""
    x, y = (json.loads(p.read_text())["question_ids"] if p.exists() else None
            for p in (a / "folds" / fold / "questions.json", b / "folds" / fold / "questions.json"))
    if x is not None and y is not None and x != y:
        sys.exit(f"{a.name} and {b.name} scored fold {fold} on different questions: their gap is not comparable")
    return x is not None and y is not None


def teachers(w: Path) -> None:
    d = load(w / "zoo-score.json", "score")
    if d is None:
        return
    ex = d.get("teacher_beats_base_exact") or {"tasks": [], "p_holm": {}}
    print(f"Teachers against base (`zoo score`, up to {d['test_sample']} test questions; exact paired p, Holm over "
          "the tasks; ± 1.96 paired SE):\n\n| task | metric | n | base | teacher | teacher − base | p | Holm |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, t in d["tasks"].items():
        vs = t["vs_base"][t["last"]]
        print(f"| {name} | {t['metric']} | {t['n']} | {t['base']:.3f} | {t['adapters'][t['last']]:.3f} | "
              f"{vs['diff']:+.3f} ± {1.96 * vs['se']:.3f} | {pf(vs.get('p'))} | {pf(ex['p_holm'].get(name))} |")
    print(f"\nTeachers above base at Holm-adjusted p < 0.05: {len(ex['tasks'])} of {len(d['tasks'])}"
          + (f" ({', '.join(ex['tasks'])})" if ex["tasks"] else "") + ".")
    line = across_line(d.get("teacher_vs_base_across_tasks"))  # `zoo score`'s own line on the group
    if line:
        print(line[0].upper() + line[1:] + ".")
    print()


def cv(w: Path) -> None:
    d = load(w / "cv" / "results.json", "cv")
    if d is None:
        return
    row = {(r["fold"], r["method"]): r for r in d["rows"]}
    gen = [m for m in d["methods"] if m in GEN or m == "teacher"]
    print(f"Cross-validation (`{d['command']}`), {len(d['folds'])} folds; per fold the difference to base [95% "
          "paired bootstrap], exact p (McNemar for 0/1 scores) and its Holm-adjusted value over the run:\n")
    print("| Fold (metric) | n | " + " | ".join(d["methods"]) + " | " + " | ".join(f"{m} − base, p (Holm)" for m in gen)
          + " | " + " | ".join(f"{m} centered cos" for m in ("mean-delta", *gen) if m != "teacher") + " |")
    print("|---|---|" + "---|" * (len(d["methods"]) + 2 * len(gen)))
    for k in d["folds"]:
        b = row[(k, "base")]
        diff = [f"{r['accuracy_vs_base']:+.2f} [{r['vs_base_low']:+.2f}, {r['vs_base_high']:+.2f}], {f(r['vs_base_p'])} "
                f"({f(r['vs_base_p_holm'])})" for r in (row[(k, m)] for m in gen)]
        cos = [f(row[(k, m)]["centered_cosine"], "{:.2f}") for m in ("mean-delta", *gen) if m != "teacher"]
        print(f"| {k} ({b['metric']}) | {b['n_questions']} | " + " | ".join(f"{row[(k, m)]['accuracy']:.2f}"
              for m in d["methods"]) + " | " + " | ".join(diff + cos) + " |")
    print("\nAcross folds (mean [95% t-interval], Wilcoxon signed-rank p (Holm over the methods); wins/losses: folds at "
          "Holm-adjusted p < 0.05; centered cosine: folds above mean-delta's, exact sign test):\n\n| Method | Accuracy | Δ vs base | "
          "Δ vs mean-delta | Centered cosine | Wins/losses vs base |\n|---|---|---|---|---|---|")
    for s in d["summary"]:
        if not s.get("reference"):
            wp = [f"p {f(s.get(k + '_wilcoxon_p'))} ({f(s.get(k + '_wilcoxon_p_holm'))})" for k in GAPS]
            print(f"| {s['method']} | {ci(s, 'accuracy', '{:.3f}')} | {ci(s, 'accuracy_vs_base')}, {wp[0]} | "
                  f"{ci(s, 'vs_mean_delta')}, {wp[1]} | {ci(s, 'centered_cosine', '{:.2f}')} "
                  f"({f(s.get('centered_above_mean_delta'), '{}')}/{s['folds']}, sign test Holm p "
                  f"{f(s.get('centered_above_mean_delta_p_holm'))}) | {s['wins_vs_base']}/{s['losses_vs_base']} |")
    print("\nSmallest mean Δ vs base the across-fold test detects with 80% power (one-sample t, α 0.05, the folds' "
          "spread): " + "; ".join(f"{m} {detectable(d, m)}" for m in d["methods"] if m != "base")
          + f". Half the mean base → oracle-best gap: {half_gap(w)}.\n")


def oracle(w: Path) -> None:
    d = load(w / "cv-oracle" / "results.json", "oracle")
    main = w / "cv" / "results.json"
    if d is None:
        return
    rows = {(r["fold"], r["method"]): r for r in d["rows"]}
    if main.exists():
        rows.update({(r["fold"], r["method"]): r for r in json.loads(main.read_text())["rows"]
                     if r["method"] in GEN and same_ids(w / "cv", w / "cv-oracle", r["fold"])})
    ms = ["base", "mean-delta", *[m for m in GEN if any(k[1] == m for k in rows)]]
    print("Oracle-best (the best of the other tasks' last teachers on the held-out task's test questions, chosen with "
          "the test labels: a reference, never a method), on the same question ids as the main run:\n")
    print("| Fold | oracle-best (adapter) | " + " | ".join(f"{m} − oracle" for m in ms) + " |\n|---|---|"
          + "---|" * len(ms))
    gaps: dict[str, list[float]] = {m: [] for m in ms}
    for o in d["oracle"]:
        if o.get("accuracy") is None:
            continue
        k, cells = o["fold"], []
        for m in ms:
            r = rows.get((k, m))
            gaps[m] += [r["accuracy"] - o["accuracy"]] if r else []
            cells.append(f"{r['accuracy'] - o['accuracy']:+.2f}" if r else "—")
        print(f"| {k} | {o['accuracy']:.2f} ({o['adapter']}) | " + " | ".join(cells) + " |")
    print("\nMean gap: " + "; ".join(f"{m} {sum(g) / len(g):+.3f} over {len(g)} folds" for m, g in gaps.items() if g)
          + "\n")
    print("Gap closed: " + "; ".join(f"{m} {closed(w, w / 'cv', m)}" for m in ms if m != "base") + "\n")


def oracle_folds(w: Path, run: Path) -> dict[str, tuple[float, dict]]:
    """Per fold where cv-oracle scored the same questions as ``run``: the oracle-best accuracy and ``run``'s
    accuracy per method there; empty without both runs."""
    o = w / "cv-oracle" / "results.json"
    if not o.exists() or not (run / "results.json").exists():
        return {}
    acc: dict[str, dict] = {}
    for r in json.loads((run / "results.json").read_text())["rows"]:
        acc.setdefault(r["fold"], {})[r["method"]] = r["accuracy"]
    return {x["fold"]: (x["accuracy"], acc[x["fold"]]) for x in json.loads(o.read_text())["oracle"]
            if x.get("accuracy") is not None and "base" in acc.get(x["fold"], {})
            and same_ids(run, w / "cv-oracle", x["fold"])}


def gap_closed(w: Path, run: Path, method: str):
    """The share of the base → oracle-best gap a method closes: Σ (method − base) / Σ (oracle − base) over
    the folds where cv-oracle scored the same questions, with the folds counted; None without them."""
    folds = {k: v for k, v in oracle_folds(w, run).items() if method in v[1]}
    gap = sum(o - acc["base"] for o, acc in folds.values())
    return None if not folds or gap <= 0 else (sum(acc[method] - acc["base"] for _, acc in folds.values()) / gap,
                                               len(folds))


def detectable(run: dict, method: str) -> str:
    """The smallest mean difference to base the across-fold test detects with 80% power at the spread of the
    method's per-fold differences in ``run`` (a results.json; computed here as ``cv_stats.summarize`` does, since
    runs written before that field existed lack it), as a signed figure (``stats.t_mde``)."""
    from llgbm_cli.evaluation.stats import t_interval, t_mde

    spread = t_interval([r["accuracy_vs_base"] for r in run["rows"] if r["method"] == method])
    return f(t_mde(spread["sd"], spread["n"]), "{:+.3f}")


def half_gap(w: Path) -> str:
    """Half the mean base → oracle-best gap over the folds scored on the main run's questions."""
    gaps = [o - acc["base"] for o, acc in oracle_folds(w, w / "cv").values()]
    return f(sum(gaps) / len(gaps) / 2, "{:+.3f}") if gaps else "—"


def closed(w: Path, run: Path, method: str) -> str:
    g = gap_closed(w, run, method)
    return "—" if g is None else f"{g[0]:+.0%} of the base → oracle-best gap ({g[1]} folds)"


def cells(w: Path) -> None:
    d = load(w / "ablation" / "comparison.json", "levers")
    if d is None:
        return
    runs = {c["cell"]: json.loads((Path(c["folder"]) / "results.json").read_text()) for c in d["cells"]}
    print(f"Lever cells (`ablate --folds`) against the main run on the same questions of {len(d['folds'])} folds (per "
          "fold exact paired p, Holm over the run; across folds t-interval, Wilcoxon p; centered cosine to the held-out "
          "teacher, folds above the main run's and the exact sign test, Holm):\n\n| Cell | Method | Δ accuracy vs main "
          "run | Wilcoxon p (Holm) | better / worse | centered cosine, cell vs main (folds above; sign p, Holm) |\n"
          "|---|---|---|---|---|---|")
    for s in d["summary"]:
        print(f"| {s['cell']} | {s['method']} | {ci(s, 'diff')} | {f(s['wilcoxon_p'])} ({f(s.get('wilcoxon_p_holm'))}) | "
              f"{s['better']} / {s['worse']} | {f(s.get('centered_cosine'), '{:.2f}')} vs "
              f"{f(s.get('base_centered_cosine'), '{:.2f}')} ({s.get('centered_above')} of {s.get('centered_folds')}; "
              f"{f(s.get('centered_sign_p'), '{:.4f}')}, {f(s.get('centered_sign_p_holm'), '{:.4f}')}) |")
    for s in d["summary"]:  # each cell fold by fold beside the main run's same method
        per_fold(runs[s["cell"]], runs["base"], s["cell"], s["method"])
    folder = {c["cell"]: Path(c["folder"]) for c in d["cells"]}
    for c, r in runs.items():  # every cell's methods against base in its own run, and the gap they close
        for s in (x for x in r["summary"] if c != "base" and x["method"] in (*GEN, "b2", "compose")):
            own = "" if s["method"] in runs["base"]["methods"] else " in its own run"
            print(f"\n{c} ({s['method']}{', few-shot' if s.get('regime') == 'few-shot' else ''}){own}: "
                  f"Δ vs base {ci(s, 'accuracy_vs_base')}, Wilcoxon p "
                  f"{f(s.get('accuracy_vs_base_wilcoxon_p'))}; detectable across folds {detectable(r, s['method'])}; "
                  f"Δ vs mean-delta {ci(s, 'vs_mean_delta')}; centered "
                  f"cosine {ci(s, 'centered_cosine', '{:.2f}')}; wins/losses vs base {s['wins_vs_base']}/{s['losses_vs_base']}; "
                  f"{closed(w, folder[c], s['method'])}")
    for c, r in runs.items():  # the levers' deltas on the held-out task's own prompts, where measured
        for s in (x for x in r["summary"] if x.get("task_probe_centered_cosine") is not None):
            print(f"\n{c} ({s['method']}): centered cosine on the held-out task's own prompts "
                  f"{ci(s, 'task_probe_centered_cosine', '{:.2f}')}")
    print()


def picks(w: Path) -> None:
    """Retrieval against the oracle-best: per fold the task of B2's top hit (the main run's and each cell's that
    retrieves) beside the oracle-best adapter's task, and how often they agree on the task and on its family
    (the registry's kind: multiple-choice or generative)."""
    from llgbm_cli.services.cv import oracle_picks
    from llgbm_cli.tasks.registry import registry_for

    o = w / "cv-oracle" / "results.json"
    if not o.exists():
        return
    best = {x["fold"]: x.get("adapter_task") for x in json.loads(o.read_text())["oracle"] if x.get("adapter_task")}
    runs = {"main": w / "cv"}
    comp = w / "ablation" / "comparison.json"
    if comp.exists():
        runs.update({c["cell"]: Path(c["folder"]) for c in json.loads(comp.read_text())["cells"] if c["cell"] != "base"})
    tops: dict[str, dict[str, str]] = {}
    for name, run in runs.items():
        for k in best:
            e = run / "folds" / k / "eval" / "results.json"
            hits = (((json.loads(e.read_text()).get("runs") or {}).get("b2") or {}).get("hits") or {}).get(k) \
                if e.exists() else None
            if hits:
                tops.setdefault(name, {})[k] = hits[0]["task"]
    if not tops:
        return
    reg = registry_for(None)
    kind = {t: reg.get(t).kind for t in {*best.values(), *(t for v in tops.values() for t in v.values())}}
    print("B2's top hit against the oracle-best adapter's task (chosen with test labels; family: the task's kind):\n\n"
          "| fold | oracle-best's task | " + " | ".join(f"B2 top hit ({n})" for n in tops) + " |\n|---|---|"
          + "---|" * len(tops))
    for k in best:
        print(f"| {k} | {best[k]} | " + " | ".join(v.get(k, "—") for v in tops.values()) + " |")
    for n, v in tops.items():
        got = [oracle_picks(v[k], best[k], kind) for k in v]
        same, family = (sum(g[key] for g in got) for key in ("picks_oracle_task", "picks_oracle_family"))
        print(f"\nB2 ({n}): the oracle-best's task on {same} of {len(v)} folds, its family on {family} of {len(v)}")
    print()


def per_fold(cell: dict, main: dict, name: str, method: str) -> None:
    """One cell's method per fold beside the main run's: accuracy, base, and the centered cosine to the held-out
    teacher (on the generic probes; on the held-out task's own prompts where the cell measured it)."""
    a, b = ({(r["fold"], r["method"]): r for r in x["rows"]} for x in (cell, main))
    print(f"\n{name} per fold ({method}; centered cosine to the held-out teacher, cell / main run; on the held-out "
          f"task's own prompts, cell):\n\n| fold | {name} | main {method} | base | centered cosine | on the task's "
          "prompts |\n|---|---|---|---|---|---|")
    for k in (k for k in main["folds"] if (k, method) in a):
        x, y = a[k, method], b.get((k, method)) or {}
        print(f"| {k} | {x['accuracy']:.2f} | {f(y.get('accuracy'), '{:.2f}')} | {a[k, 'base']['accuracy']:.2f} | "
              f"{f(x.get('centered_cosine'), '{:.2f}')} / {f(y.get('centered_cosine'), '{:.2f}')} | "
              f"{f(x.get('task_probe_centered_cosine'), '{:.2f}')} |")


def timings(w: Path) -> None:
    rows = [json.loads(x) for x in (w / "timings.jsonl").read_text().splitlines() if x.strip()] \
        if (w / "timings.jsonl").exists() else []
    print("Wall time of each step (timings.jsonl):\n\n| step | seconds | finished | load (1, 5, 15 min) |\n|---|---|---|---|\n"
          + "".join(f"| {t['step']} | {t['seconds']} | {t['finished']} | {t['load']} |\n" for t in rows))


def against(w: Path, other: Path) -> None:
    """Two worlds' cross-validations (e.g. float32 and bf16 training) method by method: each fold's accuracy in
    both, on the very same questions (stops otherwise); across the folds the mean difference [t-interval] and
    the Wilcoxon signed-rank p, and the folds where they differ."""
    from llgbm_cli.evaluation.stats import t_interval, wilcoxon_across

    a, b = (load(x / "cv" / "results.json", "cv") for x in (w, other))
    if a is None or b is None:
        return
    folds = [k for k in a["folds"] if k in b["folds"]]
    for k in folds:
        if not same_ids(w / "cv", other / "cv", k):
            sys.exit(f"fold {k}: no questions.json in one of the runs")
    ra, rb = ({(r["fold"], r["method"]): r for r in d["rows"]} for d in (a, b))
    print(f"Cross-validation, {w.name} against {other.name} ({len(folds)} folds, the same questions), per method: "
          f"mean accuracy in each, {other.name} − {w.name} across folds [95% t-interval], Wilcoxon p, folds equal:\n\n"
          f"| method | {w.name} | {other.name} | difference | Wilcoxon p | folds equal | centered cosine |\n"
          "|---|---|---|---|---|---|---|")
    for m in (m for m in a["methods"] if m in b["methods"]):
        x = [ra[(k, m)]["accuracy"] for k in folds]
        y = [rb[(k, m)]["accuracy"] for k in folds]
        diffs = [j - i for i, j in zip(x, y)]
        d = t_interval(diffs)
        cx, cy = ([r[(k, m)]["centered_cosine"] for k in folds] for r in (ra, rb))
        cos = "—" if None in cx + cy else f"{sum(cx) / len(cx):.2f} → {sum(cy) / len(cy):.2f}"
        print(f"| {m} | {sum(x) / len(x):.3f} | {sum(y) / len(y):.3f} | {ci({'diff': d['mean'], 'low': d['low'], 'high': d['high']}, 'diff')} | "
              f"{f(wilcoxon_across(diffs))} | {sum(i == j for i, j in zip(x, y))}/{len(folds)} "
              f"| {cos} |")
    print()


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--against" in args:
        i = args.index("--against")
        against(Path(args[0] if i else "runs-research"), Path(args[i + 1]))
        sys.exit(0)
    w = Path(args[0] if args else Path(__file__).resolve().parent.parent / "runs-research")
    for table in (teachers, cv, oracle, cells, picks, timings):
        table(w)
