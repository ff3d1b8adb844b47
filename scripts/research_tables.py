"""Print docs/results.md's tables from the files `scripts/research.sh` writes (markdown on stdout).

    python scripts/research_tables.py [WORKDIR]      # default: the research profile's workdir

Sections whose files are missing are skipped with a note, so it can be run after any step:
the teacher sweeps on held-out train records (`sweep`, `sweep-lr`, `sweep-layout` steps) and the chosen
layout's checkpoints on test questions (`layout-test`), the teachers against base (`score` step), the
multitask settings on held-out training tasks (`mtval` step), the cross-validation over every fold with its
oracle-best reference (`cv` step, and `oracle` for every fold), B1's chosen setting over every fold it ran
(`b1` step with `B1_FOLDS`), multitask against λ = 0 over every fold, the lever cells and B1 beside the main
cross-validation on the same folds (`levers`, `b1` steps). Every number is read from those files.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent

# (folder under the workdir, method, the setting it changes) of the lever cells and B1 runs (λ = 0 has
# its own table over more folds: lambda0)
CELLS = [
    ("cv", "multitask", "main run"),
    ("cv-task0.1", "multitask", "task_weight = 0.1"),
    ("cv-centered", "multitask", "delta_centered (mse: the same loss)"),
    ("cv-cosine", "multitask", "delta_loss_type = cosine"),
    ("cv-cosine-centered", "multitask", "cosine + delta_centered"),
    ("cv-gradnorm", "multitask", "loss_balance = gradnorm"),
    ("cv-b1-lr1e-4", "b1", "B1, lr 1e-4, 2 epochs"),
    ("cv-b1-lr1e-4-relational", "b1", "B1, lr 1e-4, 2 epochs, relational_weight = 10"),
    ("cv-b1", "b1", "B1, lr 1e-3, 5 epochs"),
]


def f(x, fmt="{:.3f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def span(t: dict) -> str:
    """A t_interval as ``mean [low, high]`` (signed), or — where it is undefined."""
    return f"{t['mean']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]" if t["low"] is not None else "—"


def pp(r: dict, key: str, digits: str = "{:.3f}") -> str:
    """A row's exact paired p-value (McNemar for 0/1 scores, Wilcoxon otherwise) with its Holm-adjusted
    one (``—`` where the run's results predate it: rerun `llgbm eval --folds` on it to recompute)."""
    return f"{f(r.get(key), digits)}, Holm {f(r.get(key + '_holm'), digits)}"


def question_ids(run: Path, fold: str) -> Optional[list[str]]:
    """The question ids a cross-validation run scored on ``fold`` (its questions.json), None if absent."""
    p = run / "folds" / fold / "questions.json"
    return json.loads(p.read_text())["question_ids"] if p.exists() else None


def assert_same_ids(a: Path, b: Path, fold: str) -> bool:
    """True when both runs scored ``fold`` on the very same question ids; stops with a message when
    they scored it on different ones (their gaps would compare different questions); False when
    either has not scored it."""
    x, y = question_ids(a, fold), question_ids(b, fold)
    if x is None or y is None:
        return False
    if x != y:
        sys.exit(f"{a.name} and {b.name} scored fold {fold} on different questions: their gaps are not comparable")
    return True


def collapse_of(ev: dict) -> list[str]:
    """The collapses B1's checks flagged at a training run's last evaluation (``norm``, ``diversity``)."""
    return [n for n in ("norm", "diversity") if ev.get(f"degenerate_{n}")]


def check_cells(ev: dict) -> list[str]:
    """The ΔW norm ratio, pairwise ΔW cosine (teachers') and collapse cells of B1's checks."""
    return [f(ev.get("lora_norm_ratio"), "{:.2f}"),
            f"{ev['gen_pairwise_cosine']:.3f} ({ev['teacher_pairwise_cosine']:.3f})",
            ", ".join(collapse_of(ev)) or "none"]


def step_of(adapter_id: str) -> int:
    """The training step of a zoo checkpoint id (``task[-rK]-sNNNNN``)."""
    return int(adapter_id.rsplit("-s", 1)[1])


def chosen_checkpoint(accs: dict[str, float]) -> str:
    """The checkpoint with the best held-out score; ties go to fewer steps."""
    best = max(accs.values())
    return min((a for a, v in accs.items() if v == best), key=step_of)


def teacher_row(t: dict, adapter: str) -> tuple[str, bool]:
    """One task's base, teacher, difference, SE, z, ≥ 2 SE and acc_norm cells of a `zoo score` report
    for one of its adapters; and whether it beats base by 2 SE."""
    vs = t["vs_base"][adapter]
    norm = ""
    if "acc_norm" in t["metrics"].get("base", {}):
        norm = f"{t['metrics']['base']['acc_norm']:.3f} / {t['metrics'][adapter]['acc_norm']:.3f}"
    passed = bool(vs["beats_base_2se"])
    return (f"{t['base']:.3f} | {t['adapters'][adapter]:.3f} | {vs['diff']:+.3f} | {vs['se']:.3f} | "
            f"{f(vs['z'], '{:.2f}')} | {'yes' if passed else 'no'} | {norm}"), passed


def teachers(w: Path) -> None:
    p = w / "zoo-score.json"
    if not p.exists() or p.stat().st_size == 0:
        print(f"(no {p}: run `STEPS=score bash scripts/research.sh`)\n")
        return
    d = json.loads(p.read_text())
    print(f"Teachers against base ({p.name}; up to {d['test_sample']} test questions per task, paired SE):\n")
    print("| task | metric | n | base | teacher | teacher − base | SE | z | ≥ 2 SE | base / teacher acc_norm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    met = 0
    for name, t in d["tasks"].items():
        row, passed = teacher_row(t, t["last"])
        met += passed
        print(f"| {name} | {t['metric']} | {t['n']} | {row} |")
    print(f"\nTeachers ≥ base + 2 SE: {met} of {len(d['tasks'])}.\n")


def sweep(w: Path) -> None:
    """Run 0's checkpoints of each sweep (one file per setting: the `sweep`, `sweep-lr` and
    `sweep-layout` steps) on the train records it never saw, and the step count that does best."""
    files = sorted(p for p in (w / "sweep").glob("heldout-*.json") if p.stat().st_size > 0)
    if not files:
        print(f"(no {w / 'sweep'}/heldout-*.json: run `STEPS=sweep bash scripts/research.sh`)\n")
        return
    for p in files:
        d = json.loads(p.read_text())
        rows = []
        for name, t in d["tasks"].items():
            steps = {step_of(a): a for a in t["adapters"]}
            rows.append((name, t, steps))
        width = sorted({s for _, _, st in rows for s in st})
        print(f"Teacher steps on held-out train records ({p.name}; run 0's checkpoints, up to {d['test_sample']} "
              "records of the train split it did not train on; the headline metric, − base in brackets):\n")
        print("| task | metric | n | base | " + " | ".join(f"{s} steps" for s in width) + " | best |")
        print("|---|---|---|---|" + "---|" * len(width) + "---|")
        for name, t, st in rows:
            accs = {s: t["adapters"][a] for s, a in st.items()}
            chosen = step_of(chosen_checkpoint(t["adapters"]))
            cells_ = [f"{accs[s]:.3f} ({accs[s] - t['base']:+.3f})" if s in accs else "—" for s in width]
            print(f"| {name} | {t['metric']} | {t['n']} | {t['base']:.3f} | " + " | ".join(cells_) + f" | {chosen} |")
        print()


def layout_test(w: Path) -> None:
    """A sweep's checkpoints on the test questions (the `layout-test` step), each task at the step
    count its held-out train records chose (ties: fewer steps), against base like the zoo's table."""
    for p in sorted((w / "sweep").glob("test-*.json")):
        held = p.with_name("heldout-" + p.name[len("test-"):])
        if p.stat().st_size == 0 or not held.exists():
            continue
        d, h = json.loads(p.read_text()), json.loads(held.read_text())
        print(f"Test questions of {p.name} (up to {d['test_sample']} per task, paired SE), each task at the step "
              f"count chosen on its held-out train records ({held.name}):\n")
        print("| task | metric | steps | n | base | teacher | teacher − base | SE | z | ≥ 2 SE | base / teacher acc_norm |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        met = 0
        for name, t in d["tasks"].items():
            chosen = chosen_checkpoint(h["tasks"][name]["adapters"])
            row, passed = teacher_row(t, chosen)
            met += passed
            print(f"| {name} | {t['metric']} | {step_of(chosen)} | {t['n']} | {row} |")
        print(f"\nTeachers ≥ base + 2 SE: {met} of {len(d['tasks'])}.\n")


def metrics_of(run: Path) -> dict:
    """The last evaluation row of a training run's metrics.jsonl (the collapse checks for B1)."""
    p = run / "metrics.jsonl"
    if not p.exists():
        return {}
    rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    evals = [r for r in rows if "lora_norm_ratio" in r or "heldout_delta_cosine" in r]
    return evals[-1] if evals else {}


def cells(w: Path) -> None:
    have = [(c, m, what) for c, m, what in CELLS if (w / c / "results.json").exists()]
    if all(c == "cv" for c, _, _ in have):  # the main run alone compares nothing
        print("(no lever cells yet: run `STEPS=\"levers b1\" bash scripts/research.sh`)\n")
        return
    folds = None
    for c, _, _ in have[1:]:
        fs = json.loads((w / c / "results.json").read_text())["folds"]
        folds = fs if folds is None else [k for k in folds if k in fs]
    folds = folds or json.loads((w / have[0][0] / "results.json").read_text())["folds"]
    print("Multitask and B1 settings on the same folds and questions (`accuracy − base` with its exact paired "
          "p and the Holm-adjusted p over the run's comparisons; the collapse columns are B1's checks on one generated "
          "adapter per training task):\n")
    print("| fold | setting | accuracy | − base (p, Holm) | − mean-delta (p, Holm) | centered cosine | delta cosine | norm ratio "
          "| ΔW norm ratio | pairwise ΔW cosine (teachers) | collapse |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in folds:
        for c, m, what in have:
            res = json.loads((w / c / "results.json").read_text())
            row = next((r for r in res["rows"] if r["fold"] == k and r["method"] == m), None)
            if row is None:
                continue
            extra = ["", "", ""]
            if m == "b1":
                ev = metrics_of(w / c / "folds" / k / "runs" / "b1")
                if ev:
                    extra = check_cells(ev)
            print(f"| {k} | {what} | {row['accuracy']:.2f} | {row['accuracy_vs_base']:+.2f} ({pp(row, 'vs_base_p', '{:.2f}')}) | "
                  f"{row['vs_mean_delta']:+.2f} ({pp(row, 'vs_mean_delta_p', '{:.2f}')}) | {f(row['centered_cosine'])} | "
                  f"{f(row['delta_cosine'])} | {f(row['norm_ratio'], '{:.3f}')} | " + " | ".join(extra) + " |")
    print()


def teachers_cv(w: Path) -> None:
    """Each fold's own teacher (the held-out task's, run 0's last checkpoint) against base on the
    cross-validation's questions, exact paired p Holm-adjusted over the teachers' comparisons alone."""
    from llgbm_cli.evaluation.stats import holm

    p = w / "cv" / "results.json"
    if not p.exists():
        return
    d = json.loads(p.read_text())
    row = {(r["fold"], r["method"]): r for r in d["rows"]}
    folds = [k for k in d["folds"] if (k, "teacher") in row]
    if not folds:
        return
    adj = dict(zip(folds, holm([row[(k, "teacher")]["vs_base_p"] for k in folds])))
    print("Teachers against base on the cross-validation's questions (each fold's own teacher; exact paired p, "
          f"Holm over these {len(folds)} comparisons; detectable: the difference with 80% power):\n")
    print("| task | metric | n | base | teacher | teacher − base [95%] | p | Holm | detectable |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in folds:
        t, b = row[(k, "teacher")], row[(k, "base")]
        win = t["accuracy_vs_base"] > 0 and adj[k] < 0.05
        diff = f"{t['accuracy_vs_base']:+.2f} [{t['vs_base_low']:+.2f}, {t['vs_base_high']:+.2f}]"
        print(f"| {k} | {t['metric']} | {t['n_questions']} | {b['accuracy']:.2f} | {t['accuracy']:.2f} | "
              f"{'**' + diff + '**' if win else diff} | {f(t['vs_base_p'])} | {f(adj[k])} | "
              f"{f(t.get('vs_base_mde'), '{:.2f}')} |")
    won = [k for k in folds if row[(k, "teacher")]["accuracy_vs_base"] > 0 and adj[k] < 0.05]
    print(f"\nTeachers above base at Holm-adjusted p < 0.05: {len(won)} of {len(folds)}"
          + (f" ({', '.join(won)})" if won else "") + ".\n")


def cv(w: Path) -> None:
    """The main cross-validation (`cv` step): accuracy per fold with the oracle-best reference, delta
    space per fold, and the summary over folds."""
    p = w / "cv" / "results.json"
    if not p.exists():
        print("(no cross-validation yet: run `STEPS=cv bash scripts/research.sh`)\n")
        return
    d = json.loads(p.read_text())
    ms = [m for m in d["methods"]]
    row = {(r["fold"], r["method"]): r for r in d["rows"]}
    oracle = {o["fold"]: o for o in d["oracle"]}
    gen = [m for m in ms if m in ("multitask", "b1", "b2")]

    def acc(r):
        if r is None:
            return "—"
        a = f"{r['accuracy']:.2f}"
        return f"**{a}**" if r["method"] != "base" and (r.get("vs_base_p_holm") or 1) < 0.05 else a

    def boot(r):
        return (f"{r['accuracy_vs_base']:+.2f} [{r['vs_base_low']:+.2f}, {r['vs_base_high']:+.2f}], "
                f"{pp(r, 'vs_base_p')}")

    print(f"Cross-validation ({d['command']}); {len(d['folds'])} folds; accuracy per fold (bold: different "
          "from base with a Holm-adjusted exact paired p < 0.05; McNemar for 0/1 scores, Wilcoxon otherwise; "
          "the interval is the paired bootstrap's):\n")
    print("| Fold (metric) | n | " + " | ".join(ms) + " | oracle-best (adapter) | "
          + " | ".join(f"{m} − base [95%], p, Holm" for m in gen) + " |")
    print("|---|---|" + "---|" * (len(ms) + 1 + len(gen)))
    for k in d["folds"]:
        b = row.get((k, "base"), {})
        o = oracle.get(k, {})
        orc = "—" if o.get("accuracy") is None else f"{o['accuracy']:.2f} ({o['adapter']})"
        print(f"| {k} ({b.get('metric', '?')}) | {b.get('n_questions', '?')} | "
              + " | ".join(acc(row.get((k, m))) for m in ms) + f" | {orc} | "
              + " | ".join(boot(row[(k, m)]) if (k, m) in row else "—" for m in gen) + " |")
    print()
    refs = [m for m in ("mean-delta", *gen) if m in ms]
    print("Centered cosine to the held-out teacher's delta and norm ratio (‖delta‖ / ‖teacher delta‖):\n")
    print("| Fold | " + " | ".join(f"{m} centered cosine" for m in refs) + " | "
          + " | ".join(f"{m} norm ratio" for m in refs) + " |")
    print("|---|" + "---|" * (2 * len(refs)))
    for k in d["folds"]:
        print(f"| {k} | " + " | ".join(f(row.get((k, m), {}).get("centered_cosine")) for m in refs) + " | "
              + " | ".join(f(row.get((k, m), {}).get("norm_ratio"), "{:.2f}") for m in refs) + " |")
    for m in gen:
        above = [k for k in d["folds"] if (k, m) in row and (k, "mean-delta") in row
                 and (row[(k, m)]["centered_cosine"] or -9) > (row[(k, "mean-delta")]["centered_cosine"] or -9)]
        print(f"\n{m} above mean-delta on centered cosine: {len(above)} of {len(d['folds'])} folds"
              + (f" ({', '.join(above)})" if above else ""))
    print("\nSummary over folds (mean with a 95% Student-t interval across folds; wins/losses: folds with "
          "a Holm-adjusted exact paired p < 0.05):\n")
    print("| Method | Folds | Accuracy | Δ vs base | Δ vs mean-delta | Gap to oracle-best | Centered cosine | "
          "Norm ratio | Wins/losses vs base | Wins/losses vs mean-delta |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def ci(s, key, fmt="{:.3f}", sign=False):
        if s.get(key) is None:
            return "—"
        fm = "{:+.3f}" if sign else fmt
        if s.get(f"{key}_low") is None:
            return fm.format(s[key])
        return f"{fm.format(s[key])} [{fm.format(s[key + '_low'])}, {fm.format(s[key + '_high'])}]"

    def wil(s, key):
        """The mean with its t-interval and the Wilcoxon signed-rank p of the folds' values (where recorded)."""
        p = s.get(f"{key}_wilcoxon_p")
        return ci(s, key, sign=True) + ("" if p is None else f", Wilcoxon p {p:.3f}")

    for s in d["summary"]:
        if s.get("reference"):
            print(f"| {s['method']} (reference) | {s['folds']} | {ci(s, 'accuracy')} | | | | | | | |")
            continue
        print(f"| {s['method']} | {s['folds']} | {ci(s, 'accuracy')} | {wil(s, 'accuracy_vs_base')} | "
              f"{wil(s, 'vs_mean_delta')} | {ci(s, 'gap_to_oracle', sign=True)} | "
              f"{ci(s, 'centered_cosine')} | {ci(s, 'norm_ratio', '{:.2f}')} | "
              f"{s['wins_vs_base']}/{s['losses_vs_base']} | {s['wins_vs_mean_delta']}/{s['losses_vs_mean_delta']} |")
    print()


def oracle(w: Path) -> None:
    """The oracle-best reference on the folds of the `oracle` step (<workdir>/cv-oracle): per held-out
    task the single training adapter with the best test accuracy, against base on the same questions,
    `mean-delta`'s gap to it (the run evaluates base and `mean-delta` too) and, where the main
    cross-validation (<workdir>/cv) scored the same questions, each other method's gap to it."""
    p = w / "cv-oracle" / "results.json"
    if not p.exists():
        print("(no oracle-best run yet: `STEPS=oracle bash scripts/research.sh`)\n")
        return
    d = json.loads(p.read_text())
    base = {r["fold"]: r for r in d["rows"] if r["method"] == "base"}
    own = {(r["fold"], r["method"]): r for r in d["rows"]}  # base and mean-delta, on the same questions
    main_cv = w / "cv" / "results.json"
    cvd = json.loads(main_cv.read_text()) if main_cv.exists() else None
    cv_rows = {(r["fold"], r["method"]): r for r in cvd["rows"]} if cvd else {}
    gen = ["mean-delta"] + [m for m in (cvd["methods"] if cvd else []) if m in ("multitask", "b1", "b2")]
    print(f"Oracle-best reference ({d['command']}): on each held-out task, the best of the other tasks' "
          "last teachers on its test questions (chosen with the test labels: a reference, never a method)"
          + "; gap = method − oracle-best on the same questions (`mean-delta` from this run"
          + (", the other methods from the main cross-validation)" if cvd else ")")
          + ":\n")
    cols = ["Fold (metric)", "n", "base", "oracle-best", "oracle − base", "adapter (task)", "candidates",
            *(f"{m} − oracle" for m in gen)]
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(gen))
    gaps: dict[str, list[float]] = {m: [] for m in gen}
    over = []
    for o in d["oracle"]:
        k = o["fold"]
        b = base.get(k, {})
        if o.get("accuracy") is None:
            continue
        diff = o["accuracy"] - b["accuracy"]
        over.append(diff)
        same = assert_same_ids(w / "cv", w / "cv-oracle", k)
        cells = []
        for m in gen:
            r = own.get((k, m)) or (cv_rows.get((k, m)) if same else None)
            if r is None:
                cells.append("—")
                continue
            gaps[m].append(r["accuracy"] - o["accuracy"])
            cells.append(f"{gaps[m][-1]:+.2f}")
        print(f"| {k} ({b.get('metric', '?')}) | {b.get('n_questions', '?')} | {b['accuracy']:.2f} | "
              f"{o['accuracy']:.2f} | {diff:+.2f} | {o['adapter']} ({o['adapter_task']}) | {o['candidates']} |"
              + "".join(f" {c} |" for c in cells))
    if over:
        print(f"\noracle-best above base on {sum(x > 0 for x in over)} of {len(over)} folds, mean "
              f"{sum(over) / len(over):+.3f}" + "".join(
                  f"; {m} mean gap {sum(g) / len(g):+.3f} over {len(g)} folds" for m, g in gaps.items() if g))
    print()


def b1_all(w: Path) -> None:
    """B1 at the chosen setting over every fold it ran (<workdir>/cv-b1): accuracy against base and
    `mean-delta` (same run, same questions), the gap to the oracle-best where the `oracle` step scored
    the same questions, delta space, and B1's collapse checks on one generated adapter per training
    task (the last evaluation of each fold's training run)."""
    from llgbm_cli.evaluation.stats import t_interval

    p = w / "cv-b1" / "results.json"
    if not p.exists():
        print("(no B1 cross-validation yet: run `STEPS=b1 bash scripts/research.sh`)\n")
        return
    d = json.loads(p.read_text())
    row = {(r["fold"], r["method"]): r for r in d["rows"]}
    q = w / "cv-oracle" / "results.json"
    od = json.loads(q.read_text()) if q.exists() else {"rows": [], "oracle": []}
    oracle_of = {o["fold"]: o for o in od["oracle"] if o.get("accuracy") is not None}
    print(f"B1 over every fold ({d['command']}); `mean-delta` and base from the same run; the gap to the "
          "oracle-best where the `oracle` step scored the same questions:\n")
    print("| fold | accuracy | − base (p, Holm) | − mean-delta (p, Holm) | − oracle | centered cosine (mean-delta) | "
          "delta cosine | norm ratio | ΔW norm ratio | pairwise ΔW cosine (teachers) | collapse |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    above, collapsed, gaps, cc, dacc = [], [], [], [], []
    for k in d["folds"]:
        r, md, b = row.get((k, "b1")), row.get((k, "mean-delta")), row.get((k, "base"))
        if r is None:
            continue
        gap = "—"
        o = oracle_of.get(k)
        if o and assert_same_ids(w / "cv-b1", w / "cv-oracle", k):
            gaps.append(r["accuracy"] - o["accuracy"])
            gap = f"{gaps[-1]:+.2f}"
        ev = metrics_of(w / "cv-b1" / "folds" / k / "runs" / "b1")
        collapsed += [k] if not ev or collapse_of(ev) else []
        if md and r["centered_cosine"] is not None and md["centered_cosine"] is not None:
            above += [k] if r["centered_cosine"] > md["centered_cosine"] else []
        cc.append(r["centered_cosine"])
        dacc.append(r["accuracy_vs_base"])
        print(f"| {k} | {r['accuracy']:.2f} | {r['accuracy_vs_base']:+.2f} ({pp(r, 'vs_base_p')}) | "
              f"{r['vs_mean_delta']:+.2f} ({pp(r, 'vs_mean_delta_p', '{:.2f}')}) | {gap} | {f(r['centered_cosine'])} "
              f"({f(md['centered_cosine'] if md else None)}) | {f(r['delta_cosine'])} | "
              f"{f(r['norm_ratio'], '{:.2f}')} | " + " | ".join(check_cells(ev) if ev else ["—", "—", "?"]) + " |")
    n = len(cc)
    print(f"\nB1 above `mean-delta` on centered cosine: {len(above)} of {n} folds; centered cosine across folds "
          f"{span(t_interval(cc))}; Δ accuracy vs base {span(t_interval(dacc))}; collapse flagged on "
          f"{len(collapsed)} of {n} folds" + (f" ({', '.join(collapsed)})" if collapsed else "")
          + (f"; mean gap to the oracle-best {sum(gaps) / len(gaps):+.3f} over {len(gaps)} folds" if gaps else "")
          + ".")
    main_cv = w / "cv" / "results.json"
    if main_cv.exists():  # the same held-out teachers and probes per fold: B1 − multitask, fold by fold
        mt = {r["fold"]: r for r in json.loads(main_cv.read_text())["rows"] if r["method"] == "multitask"}
        diff = [row[(k, "b1")]["centered_cosine"] - mt[k]["centered_cosine"] for k in d["folds"]
                if (k, "b1") in row and k in mt and row[(k, "b1")]["centered_cosine"] is not None
                and mt[k]["centered_cosine"] is not None]
        if diff:
            print(f"B1 above the main run's multitask on centered cosine: {sum(x > 0 for x in diff)} of {len(diff)} "
                  f"folds; B1 − multitask across folds {span(t_interval(diff))}.")
    print()


# (run folder under <workdir>/mtval, the setting) of the `mtval` step, in the order it runs them
MTVAL = [
    ("base", "linear warm-up and decay, λ = 1 (the earlier profile)"),
    ("deltaw", "linear, λ = 1, weight_loss = delta_w"),
    ("factors", "linear, λ = 1, weight_loss = factors"),
    ("lam10", "linear, λ = 10"),
    ("lam100", "linear, λ = 100"),
    ("const-lam0", "constant lr, λ = 0 (weights only)"),
    ("const-lam1", "constant lr, λ = 1"),
    ("const-lam10", "constant lr, λ = 10 (chosen)"),
    ("const-lam10-lr3e-3", "constant lr 3e-3, λ = 10"),
]


def mtval(w: Path) -> None:
    """Multitask settings on the training run with three tasks held out (`mtval` step): the held-out
    and training adapters' deltas against their teachers' at the last evaluation."""
    have = [(n, what) for n, what in MTVAL if (w / "mtval" / n / "metrics.jsonl").exists()]
    if not have:
        print("(no multitask validation runs yet: run `STEPS=mtval bash scripts/research.sh`)\n")
        return
    print("Multitask settings on held-out training tasks (ARC-Challenge, PIQA, MultiArith held out; 60 steps; "
          "the last evaluation of each run, deltas on the generic probes; no test question):\n")
    print("| setting | held-out centered cosine | held-out delta cosine | held-out norm ratio | "
          "training centered cosine | training norm ratio |")
    print("|---|---|---|---|---|---|")
    for n, what in have:
        ev = metrics_of(w / "mtval" / n)
        print(f"| {what} | {f(ev.get('heldout_delta_centered_cosine'))} | {f(ev.get('heldout_delta_cosine'))} | "
              f"{f(ev.get('heldout_delta_norm_ratio'), '{:.3f}')} | {f(ev.get('train_delta_centered_cosine'))} | "
              f"{f(ev.get('train_delta_norm_ratio'), '{:.3f}')} |")
    print()


def lambda0(w: Path) -> None:
    """The main run's multitask against the same generator trained without the delta loss (λ = 0),
    over every fold both ran."""
    from llgbm_cli.evaluation.stats import t_interval

    p, q = w / "cv" / "results.json", w / "cv-lambda0" / "results.json"
    if not (p.exists() and q.exists()):
        print("(no λ = 0 cross-validation yet: run `STEPS=levers bash scripts/research.sh`)\n")
        return
    main_rows = {r["fold"]: r for r in json.loads(p.read_text())["rows"] if r["method"] == "multitask"}
    zero_rows = {r["fold"]: r for r in json.loads(q.read_text())["rows"] if r["method"] == "multitask"}
    folds = [k for k in main_rows if k in zero_rows]
    print("Multitask (the profile's λ) against λ = 0 (weights only), the same generator, steps and "
          "questions:\n")
    print("| Fold | accuracy | accuracy λ = 0 | centered cosine | centered cosine λ = 0 | norm ratio | "
          "norm ratio λ = 0 |")
    print("|---|---|---|---|---|---|---|")
    for k in folds:
        a, z = main_rows[k], zero_rows[k]
        print(f"| {k} | {a['accuracy']:.2f} | {z['accuracy']:.2f} | {f(a['centered_cosine'])} | "
              f"{f(z['centered_cosine'])} | {f(a['norm_ratio'], '{:.2f}')} | {f(z['norm_ratio'], '{:.2f}')} |")
    cc = {k: (main_rows[k]["centered_cosine"], zero_rows[k]["centered_cosine"]) for k in folds}
    above = [k for k, (a, z) in cc.items() if a is not None and z is not None and a > z]
    d_cc = t_interval([a - z for a, z in cc.values() if a is not None and z is not None])
    d_acc = t_interval([main_rows[k]["accuracy"] - zero_rows[k]["accuracy"] for k in folds])
    print(f"\nAbove λ = 0 on centered cosine: {len(above)} of {len(folds)} folds; difference across folds "
          f"{span(d_cc)}; accuracy difference {span(d_acc)}.\n")


def timings(w: Path) -> None:
    p = w / "timings.jsonl"
    if not p.exists():
        return
    print("Wall time of each step (timings.jsonl):\n")
    print("| step | seconds | finished | load (1, 5, 15 min) |")
    print("|---|---|---|---|")
    for line in p.read_text().splitlines():
        if line.strip():
            t = json.loads(line)
            print(f"| {t['step']} | {t['seconds']} | {t['finished']} | {t['load']} |")
    print()


def main() -> None:
    if len(sys.argv) > 1:
        w = Path(sys.argv[1])
    else:
        import subprocess

        w = Path(subprocess.run(["llgbm", "-p", str(REPO / "profiles" / "research.toml"), "config", "workdir"],
                                capture_output=True, text=True, check=True).stdout.strip())
    sweep(w)
    layout_test(w)
    teachers(w)
    mtval(w)
    teachers_cv(w)
    cv(w)
    oracle(w)
    b1_all(w)
    lambda0(w)
    cells(w)
    timings(w)


if __name__ == "__main__":
    main()
