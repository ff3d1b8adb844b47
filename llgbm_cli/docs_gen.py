"""Generate docs/config.md (from the config schema) and docs/cli.md (from the Typer app).

    python -m llgbm_cli.docs_gen          # rewrite both files
    python -m llgbm_cli.docs_gen --check  # exit 1 when either is stale (used by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _fmt_default(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, str):
        return f'`"{v}"`'
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, dict) and not v:
        return "`{}`"
    return f"`{v!r}`".replace("'", '"')


TASKS_GUIDE = """
## Declaring a task

A task is a named data set with a way to prompt, answer and score it. The shipped sets are built-in
presets (`arc-easy`, `arc-challenge`, `boolq`, `openbookqa`, `piqa`: multiple-choice; `mawps`:
generative); a project adds its own as `[tasks.NAME]` tables, and any command that names a task
accepts them (`zoo build --tasks`, `zoo add --task`, `zoo score`, `[probes] source = "task:NAME"`,
`generate --task`, `eval --task`/`--holdout`). `llgbm data list` shows every task with its kind,
metric, sizes and source; `llgbm data show NAME` prints a few records as the model sees them;
`llgbm data check NAME` reads every record and lists every bad one.

A multiple-choice task from a CSV file with its own column names (`q,opt_a,opt_b,opt_c,gold`, the
answer a letter), scored by the log-likelihood of each option's text after the cloze prompt:

```toml
[tasks.my-quiz]
path = "data/quiz.csv"          # one file: split 80/20 into train/test with split_seed (recorded)
prompt = "{q}"
choices = ["{opt_a}", "{opt_b}", "{opt_c}"]
answer = "{gold}"               # a label, an option text, a 0-based index or a letter A-Z
scoring = "choice"              # reports acc and acc_norm; `label` scores "answerN" after an instruction
template = "Question: {stem}\\nAnswer:"   # the default for choice scoring (no chat template)
description = "Pick the right answer to a short quiz question."
```

A file in the LLM-Adapters format (`instruction` ending with `Answer format: answer1/answer2/...`,
`answer`) needs only its path: `[tasks.my-json] path = "data/mine.json"`. A Hugging Face dataset,
from the hub or a `save_to_disk` folder, names its splits and fields:

```toml
[tasks.arc-hub]
path = "allenai/ai2_arc"        # or a save_to_disk folder / .parquet file
dataset_name = "ARC-Easy"
test_split = "validation"
prompt = "{question}"
choices = "{choices.text}"
labels = "{choices.label}"
answer = "{answerKey}"
```

A generative task: a folder with `train.jsonl` and `test.jsonl` of
`{"problem": ..., "work": ..., "value": ...}`, decoded greedily and scored by the number in the
output:

```toml
[tasks.my-arith]
path = "data/arith"
kind = "generate"
metric = "number"               # or exact_match
prompt = "{problem}"
answer = "{value}"
target = "{work}. The answer is {value}."   # what teachers train on (default: the answer)
stop = ["\\n\\n"]
max_new_tokens = 48
```

The `number` rule: the text is cut at the first stop sequence; the first number after the last
`answer is`/`answer:` is taken, else the last number; thousands commas, `$`, units and a final full
stop are ignored, `3/4` is a fraction; it matches the reference within `tolerance` (relative), or when
written with two or more decimals, the reference rounded to as many decimals.

A table named like a preset overrides only the keys it sets: `[tasks.arc-easy] scoring = "choice"`
scores ARC-Easy by option text in the cloze form, and its teachers then train on the option text.
`[data] scoring` (or `zoo score --scoring`) switches every multiple-choice task at once. Bad records
(a missing answer, an answer not among the choices, an unknown template field) stop the command with
one line naming the file, line and field; `skip_bad = true` skips them and reports how many.

## Teacher settings per task

Tasks do not all learn at one pace: a multiple-choice set may need more steps than an arithmetic one.
A `[zoo.per_task.NAME]` table changes the settings of one task's teachers and leaves the rest to
`[zoo]`:

```toml
[zoo.per_task.arc-easy]
steps = 192
warmup_steps = 144     # checkpoints at 168 and 192 (zoo.checkpoints = 2)
```

The zoo records each task's settings. Changing one table makes only that task's teachers stale:
`zoo build` refuses with the task and the keys that differ, and `zoo build --tasks NAME --force`
rebuilds that task alone. Its earlier checkpoints leave the manifest and the disk; every other task's
teachers are kept.

Choose such settings without a test question. With `zoo.data_fraction` < 1 each trajectory trains on
a seeded subset of the train split, and `zoo score --split heldout` scores run 0's checkpoints on the
train records that run never saw. For example, build one long trajectory per task in a separate
folder (`zoo build --set zoo.path=sweep --set zoo.runs=1 --set zoo.steps=192 --set zoo.warmup_steps=0
--set zoo.checkpoints=4`), score its checkpoints with `zoo score --split heldout --set zoo.path=sweep`,
and pick each task's steps from that curve. `zoo score` keeps every question's score in
`<zoo>/scores.json` (`scores-heldout.json`). A later run takes a score from there when the questions,
the adapter's weights hash and the scoring are unchanged, so after rebuilding some tasks only their
teachers are scored again.
"""


def config_markdown() -> str:
    from .config import describe_schema

    rows = describe_schema()
    out = [
        "# Configuration reference",
        "",
        "<!-- generated by `python -m llgbm_cli.docs_gen`; do not edit by hand -->",
        "",
        "Every command reads `llgbm.toml` (current folder, or `--project FILE`). Flags override the",
        "file; `--set section.key=value` overrides any key. Every command checks the whole config when it",
        "loads it (every generator, index kind, merge strategy and eval method it names included) and lists",
        "every problem together as `section.key: message`, or under the flag (`--steps: ...`) or `--set`",
        "that gave the value; `llgbm config validate` runs that check alone (and that the models resolve),",
        "and `llgbm config show` prints the resolved values and whether each came from the default, the",
        "file or a flag.",
        "",
        "Defaults are the method's default recipe: the values the original plan of behavioral matching",
        "set (for instance multitask training at learning rate 3e-5 for 5,000 steps with λ = 1 warmed up",
        "over 500 steps, and the 18-cell ablation grid). The shipped `llgbm.toml` is the CPU-sized profile",
        "of the built-in world; its comments say where and why it departs from a default. B1 and B2 are",
        "the two delta-only baselines (docs/concepts.md): B1 a generator trained on the delta loss alone,",
        "B2 a delta predictor that drives retrieval.",
        "",
        "A project file can build on another: `extends = \"research.toml\"` at its top (a path relative",
        "to the file that names it) takes every value of that file, and this file's own values go on top.",
        "Tables merge key by key, so `[zoo.per_task.piqa]` with only `steps` keeps the inherited",
        "`warmup_steps`; any other value, an array included, replaces the inherited one whole. A base file",
        "may extend another (up to 8 deep; a cycle is an error). Relative paths (`project.workdir`, a",
        "task's files) are taken from the folder of the file named with `--project`, whichever file sets",
        "them. `llgbm config show` names the file each inherited value came from. For example,",
        "`profiles/research-l30.toml` is the research profile with its own workdir, all 30 layers adapted and",
        "the step counts chosen at that layout; it begins:",
        "",
        "```toml",
        "extends = \"research.toml\"",
        "",
        "[project]",
        "workdir = \"../runs-research-l30\"",
        "",
        "[lora]",
        "last_layers = 30",
        "```",
        "",
    ]
    section = None
    for r in rows:
        sec = r["key"].rsplit(".", 1)[0]
        if sec != section:
            section = sec
            out += ["", f"## `[{sec}]`", "", "| key | default | meaning |", "| --- | --- | --- |"]
        key = r["key"].rsplit(".", 1)[1]
        help_ = r["help"].replace("|", "\\|")
        out.append(f"| `{key}` | {_fmt_default(r['default'])} | {help_} |")
    return "\n".join(out) + "\n" + TASKS_GUIDE


def cli_markdown() -> str:
    import typer.main

    from .app import app

    root = typer.main.get_command(app)
    out = [
        "# Command-line reference",
        "",
        "<!-- generated by `python -m llgbm_cli.docs_gen`; do not edit by hand -->",
        "",
        "## Shell-scripting contract",
        "",
        "- Global options go anywhere on the line: `--project/-p FILE`, `-v/--verbose` (debug logs and",
        "  tracebacks), `--quiet/-q` (no progress bars), `--json` (the result as one JSON object on stdout).",
        "- Results go to stdout; progress bars, logs and errors to stderr.",
        "- Exit codes: `0` ok; `1` the command ran but failed a check (or an internal error); `2` bad",
        "  input: a usage error, an invalid config, a missing or corrupt file. Errors are one line",
        "  (`error: ...`, sometimes followed by `hint: ...`), usage errors (an unknown command or option, a",
        "  missing argument) included. `-v` adds the traceback above that line and changes nothing else:",
        "  not the exit code, not the line, not the error object. The error says",
        "  where a bad value came from: the flag (`--density: 2 must be in (0, 1] ...`), the override",
        "  (`--set merge.density=2: ...`) or the project file (`llgbm.toml: merge.density: ...`).",
        "- With `--json`, a failing command still prints one JSON object on stdout, the error object",
        "  `{\"error\": \"...\", \"hint\": \"...\" or null, \"exit_code\": N}` (same text as the stderr line);",
        "  a command that finished and printed its result but failed a check (exit 1, e.g. `cache-deltas`",
        "  with adapters it could not cache) keeps that result as its one object.",
        "- Ctrl-C exits with 130; finished outputs stay, half-written ones are removed.",
        "",
        "## Output-folder policy",
        "",
        "Every command that writes a folder (`zoo build`, `cache-deltas`, `train ...`, `index build`,",
        "`merge`, `retrieve --out`, `generate`, `eval`) applies the same rules before it computes anything:",
        "",
        "- An existing output of the same kind is replaced only with `--force` (`cache-deltas` and",
        "  `zoo build` update theirs in place). The kind is recognised by its own files: an adapter by",
        "  `adapter_config.json`, a delta cache by `manifest.json`, an index by `index.faiss`, an",
        "  evaluation by `results.json`, a generator run by `checkpoints/`, `metrics.jsonl` or `final/`,",
        "  a B2 predictor by `predictor.json`, a zoo by `zoo.jsonl`; and by the command its provenance",
        "  record (`llgbm.json`) names, which tells a multitask run from a B1 run and never lets a folder",
        "  another command wrote (a B2 predictor's `metrics.jsonl`) pass for this kind.",
        "- Refused with or without `--force` (exit 2): an output that is a file; a non-empty folder",
        "  that is not an earlier output of that kind; an output that is, contains or lies inside one",
        "  of the command's inputs (the zoo, the checkpoint it reads, the adapters it merges); an",
        "  output that is or contains the project folder or its work folder.",
        "- One writer per output: a second command writing the same output (`train`, `eval`, `merge`,",
        "  `generate`, `zoo`, `cache-deltas`, `index build`, `ablate`), even with `--force`, exits 1 at",
        "  once and leaves the first alone (the lock file `.<name>.lock` beside it goes when it is done).",
        "- Writes go to a temporary folder beside the target and are renamed into place. On a failure",
        "  or Ctrl-C, even during the final swap or in a `--force` training run, the previous folder is",
        "  put back as it was and no temporary folder is left. A command killed outright (SIGKILL) cannot",
        "  clean up: the next command writing the same output removes what it left and puts back the",
        "  folder it was replacing (`.<name>.old-<pid>`) unless the killed command had finished, and says",
        "  so on stderr. An interrupted `zoo build --force` keeps the rebuilt tasks' earlier teachers",
        "  (manifest rows, folders, training states) until the rebuild finishes.",
        "- Training runs: `--resume` never writes over a later checkpoint (a run that would stop before",
        "  its checkpoint's step is refused, exit 2); a first run stopped before its first checkpoint is",
        "  started again by a plain rerun or by `--resume`, without `--force`.",
        "- Names are never paths: task names, adapter ids (an added adapter's folder name) and cell names",
        "  are letters, digits and `_ . - + = , : @`, starting with a letter or a digit; every path built",
        "  from a name must stay inside its folder.",
        "- Adapters are PEFT folders that `PeftModel.from_pretrained` loads without a warning: they",
        "  carry `layers_to_transform` when not every layer is adapted, and `base_model_name_or_path` is",
        "  a folder (a built-in's converted copy under `$LLGBM_HOME/models`) or hub id, so",
        "  `AutoPeftModelForCausalLM` loads one alone.",
        "- Files and folders get the modes your umask gives (a group-readable umask shares them),",
        "  safetensors files included.",
        "- Nothing a user can hand over is unpickled: training checkpoints keep their state in",
        "  `trainer_state.safetensors` + `trainer_state.json`; an older `trainer_state.pt` is read",
        "  with `torch.load(weights_only=True)` and refused, naming the file, if it holds anything else.",
        "",
    ]

    def walk(cmd, path: list[str]):
        # Duck-typed: Typer may run on click or on its own vendored copy.
        if hasattr(cmd, "commands"):
            if path:
                out.extend([f"## `llgbm {' '.join(path)}`", "", (cmd.help or "").strip(), ""])
            for name in cmd.commands:
                walk(cmd.commands[name], path + [name])
            return
        out.extend([f"### `llgbm {' '.join(path)}`", "", (cmd.help or "").strip(), ""])
        params = [p for p in cmd.params if p.name not in ("help",)]
        if params:
            out.extend(["| argument / option | default | help |", "| --- | --- | --- |"])
            for p in params:
                if p.param_type_name == "argument":
                    name = "`" + (p.name or "").upper() + "`"
                else:
                    name = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
                default = "" if p.default in (None, False, ()) or callable(p.default) else f"`{p.default}`"
                help_ = (getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ")
                out.append(f"| {name} | {default} | {help_} |")
            out.append("")

    walk(root, [])
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = []
    for name, text in (("config.md", config_markdown()), ("cli.md", cli_markdown())):
        path = DOCS / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run `python -m llgbm_cli.docs_gen`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
