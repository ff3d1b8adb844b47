"""The task registry: definitions, loaders, bad input, choice scoring, generation and the number metric."""

import csv
import json
import os

import pytest
import torch

from llgbm_cli.errors import InputError
from llgbm_cli.tasks.answer_metrics import exact_match, extract_number, number_match
from llgbm_cli.tasks.prompts import PromptForm
from llgbm_cli.tasks.registry import TaskRegistry, TaskSpec

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

LA_ROWS = [
    {"instruction": "Please choose the correct answer to the question: Which is a fruit?\n\nAnswer1: apple "
                    "Answer2: chair Answer3: stone\n\nAnswer format: answer1/answer2/answer3",
     "input": "", "output": "the correct answer is answer1", "answer": "answer1"},
    {"instruction": "Please choose the correct answer to the question: Which can fly?\n\nAnswer1: rock "
                    "Answer2: bird Answer3: table\n\nAnswer format: answer1/answer2/answer3",
     "input": "", "output": "the correct answer is answer2", "answer": "answer2"},
] * 5


def write_csv(path, rows, header=("q", "opt_a", "opt_b", "opt_c", "gold")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


CSV_ROWS = [(f"What is {i} plus one?", str(i + 1), str(i + 2), str(i), "A") for i in range(12)]


def reg(tmp_path, **tables):
    return TaskRegistry({k: TaskSpec(**v) for k, v in tables.items()}, tmp_path)


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("text, ref, ok", [
    ("The answer is 2.0.", 2, True),
    ("The answer is 2.", 2.0, True),
    ("It costs $1,234.50 in total", 1234.5, True),
    ("1,234 apples", 1234, True),
    ("12 apples and 7 pears, so the answer is 19 fruits", 19, True),
    ("The answer is: -3.5 degrees", -3.5, True),
    ("−7 °C", -7, True),
    ("x = 3/4", 0.75, True),
    ("It is .5 of the cake", 0.5, True),
    ("(22 - 14) / 4 = 2. The answer is 2.", 2, True),
    ("3 - 1.166667 = 1.833333. The answer is 1.83.", 1.8333333333333335, True),
    ("The answer is 1.8.", 1.8333333333333335, False),  # one decimal is not close enough
    ("answer is 18. Then 20 more", 18, True),
    ("The answer is 20", 18, False),
    ("no number here", 3, False),
    ("2, 3, 4", 4, True),  # no cue: the last number
])
def test_number_extraction_table(text, ref, ok):
    assert number_match(text, ref) is ok


def test_extract_number_and_exact_match():
    assert extract_number("1,000,000 people") == 1_000_000
    assert extract_number("nothing") is None
    assert exact_match("  Paris. ", "paris") and not exact_match("Paris France", "Paris")


# --------------------------------------------------------------------------- definitions and loaders


def test_json_llm_adapters_and_csv_fields_tasks(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps(LA_ROWS))
    write_csv(tmp_path / "quiz.csv", CSV_ROWS)
    r = reg(tmp_path, **{"my-json": {"path": "mine.json", "test_fraction": 0.3},
                         "quiz": {"path": "quiz.csv", "prompt": "{q}", "choices": ["{opt_a}", "{opt_b}", "{opt_c}"],
                                  "answer": "{gold}"}})
    j = r.get("my-json")
    assert (j.kind, j.format, j.scoring, j.metric) == ("multiple_choice", "llm-adapters", "label", "acc")
    tr, te = j.records("train"), j.records("test")
    assert (len(tr), len(te)) == (7, 3) and "seed 0" in j.split_info().note
    assert {r.id for r in tr}.isdisjoint({r.id for r in te})
    assert tr[0].stem in ("Which is a fruit?", "Which can fly?") and tr[0].choices[0] in ("apple", "rock")
    q = r.get("quiz")
    assert (q.format, q.scoring) == ("fields", "choice")
    rec = q.records("train")[0]
    assert rec.answer == 0 and rec.choices[0] == str(int(rec.stem.split()[2]) + 1)
    assert "Answer format: answer1/answer2/answer3" in rec.prompt  # label form built from the options
    # the same split on every read (seeded)
    assert [x.id for x in TaskRegistry({"quiz": q.spec}, tmp_path).get("quiz").records("test")] == \
        [x.id for x in q.records("test")]


def test_generative_jsonl_alpaca_and_folder_splits(tmp_path):
    d = tmp_path / "arith"
    d.mkdir()
    for split, n in (("train", 6), ("test", 3)):
        with open(d / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"problem": f"{i} + {i} = ?", "work": f"{i} + {i} = {2 * i}", "value": 2 * i}) + "\n")
    (tmp_path / "alp.json").write_text(json.dumps([{"instruction": f"Say {i}", "input": "", "output": str(i)}
                                                   for i in range(10)]))
    r = reg(tmp_path, arith={"path": "arith", "kind": "generate", "metric": "number", "prompt": "{problem}",
                             "answer": "{value}", "target": "{work}. The answer is {value}.", "stop": "\n"},
            alp={"path": "alp.json", "format": "alpaca"})
    a = r.get("arith")
    assert a.split_info().sizes == {"train": 6, "test": 3} and a.split_info().note is None
    rec = a.records("train")[2]
    assert (rec.completion, rec.gold) == ("2 + 2 = 4. The answer is 4.", "4") and rec.generative
    assert a.spec.stop == ["\n"]
    b = r.get("alp")
    assert (b.kind, b.metric) == ("generate", "exact_match")


def test_save_to_disk_and_parquet_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"question": [f"q{i}?" for i in range(8)], "choices": [{"text": ["yes", "no"], "label": ["A", "B"]}] * 8,
            "answerKey": ["A", "B"] * 4}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows)})
    dd.save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "one.parquet"))
    common = {"prompt": "{question}", "choices": "{choices.text}", "labels": "{choices.label}", "answer": "{answerKey}"}
    r = reg(tmp_path, saved={"path": "saved", "test_split": "validation", **common}, pq={"path": "one.parquet", **common})
    s = r.get("saved")
    assert s.split_info().sizes == {"train": 8, "test": 8}
    assert [x.answer for x in s.records("test")[:2]] == [0, 1] and s.records("test")[0].options == ("A", "B")
    assert sum(r.get("pq").split_info().sizes.values()) == 8


def test_hub_id_unreachable_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = reg(tmp_path, hub={"path": "someone/not-a-cached-dataset-xyz", "prompt": "{q}", "choices": "{c}", "answer": "{a}"})
    with pytest.raises(InputError) as e:
        r.get("hub").records("train")
    assert "tasks.hub.path: cannot load hub dataset 'someone/not-a-cached-dataset-xyz'" in e.value.message
    assert "\n" not in e.value.message


@pytest.mark.parametrize("table, rows, needle", [
    ({"path": "missing.csv"}, None, "tasks.t.path: "),
    ({"prompt": "{question}"}, CSV_ROWS, "tasks.t.prompt: unknown field {question}"),
    ({}, [("Q?", "a", "b", "c", "")] + CSV_ROWS, "quiz.csv:2: field `answer`: the record has no answer"),
    ({}, [("Q?", "a", "b", "c", "zebra")] + CSV_ROWS, "quiz.csv:2: field `answer`: answer 'zebra' is not among"),
    ({"train_split": "train", "test_split": "test"}, [], "has no usable records"),
])
def test_bad_input_is_one_line_naming_file_record_and_field(tmp_path, table, rows, needle):
    if rows is not None:
        write_csv(tmp_path / "quiz.csv", rows)
    spec = {"path": "quiz.csv", "prompt": "{q}", "choices": ["{opt_a}", "{opt_b}", "{opt_c}"], "answer": "{gold}", **table}
    with pytest.raises(InputError) as e:
        reg(tmp_path, t=spec).get("t").records("train")
    assert needle in e.value.message and "\n" not in e.value.message


def test_check_lists_every_bad_record_and_skip_bad_counts_them(tmp_path):
    rows = [("Q1?", "a", "b", "c", "")] + CSV_ROWS + [("Q2?", "a", "b", "c", "Z")]
    write_csv(tmp_path / "quiz.csv", rows)
    spec = {"path": "quiz.csv", "prompt": "{q}", "choices": ["{opt_a}", "{opt_b}", "{opt_c}"], "answer": "{gold}"}
    res = reg(tmp_path, t=spec).get("t").check()
    assert len(res["bad"]) == 2 and any(":2:" in b for b in res["bad"]) and any(":15:" in b for b in res["bad"])
    t = reg(tmp_path, t={**spec, "skip_bad": True}).get("t")
    info = t.split_info()
    assert len(info.skipped) == 2 and sum(info.sizes.values()) == 12


def test_name_used_twice_and_unknown_name(tmp_path):
    with pytest.raises(InputError, match="used twice"):
        TaskRegistry({"My-Task": {"path": "a.csv"}, "my_task": {"path": "b.csv"}}, tmp_path)
    with pytest.raises(InputError) as e:
        TaskRegistry().check("arc-esy")
    assert "did you mean 'arc-easy'" in e.value.message and "mawps" in e.value.message


def test_preset_override_keeps_the_pack_and_changes_the_form(tmp_path):
    r = reg(tmp_path, **{"arc-easy": {"scoring": "choice"}})
    t = r.get("arc-easy")
    assert t.origin == "built-in, overridden" and t.scoring == "choice" and t.format == "pack"
    f = PromptForm.of(t)
    rec = t.records("test")[0]
    assert f.template == "Question: {stem}\nAnswer:" and not f.chat_template
    assert f.context(None, rec) == f"Question: {rec.stem}\nAnswer:"
    assert f.continuations(rec) == [" " + c for c in rec.choices]


def test_config_accepts_task_tables_and_checks_names(tmp_path):
    from llgbm_cli.config import load_config
    from llgbm_cli.errors import ConfigError

    write_csv(tmp_path / "quiz.csv", CSV_ROWS)
    p = tmp_path / "llgbm.toml"
    p.write_text('[zoo]\ntasks = ["quiz", "boolq"]\n[tasks.quiz]\npath = "quiz.csv"\nprompt = "{q}"\n'
                 'choices = ["{opt_a}", "{opt_b}", "{opt_c}"]\nanswer = "{gold}"\n')
    r = load_config(p)
    assert "quiz" in r.config.tasks
    p.write_text('[zoo]\ntasks = ["quizz"]\n[tasks.quiz]\npath = "quiz.csv"\nprompt = "{q}"\nbogus = 1\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "tasks.quiz.bogus: unknown key" in e.value.message and "zoo.tasks: unknown task 'quizz'" in e.value.message


# --------------------------------------------------------------------------- scoring and generation on the tiny model


def _hand_loglik(model, ids_prefix, ids_cont):
    ids = torch.tensor([ids_prefix + ids_cont])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(ids_prefix) - 1 + j, t]) for j, t in enumerate(ids_cont))


def test_choice_scoring_equals_hand_computed_loglik(tiny, tmp_path):
    from llgbm_cli.tasks.scoring import score_multiple_choice

    model, tok = tiny
    write_csv(tmp_path / "quiz.csv", CSV_ROWS)
    t = reg(tmp_path, quiz={"path": "quiz.csv", "prompt": "{q}", "choices": ["{opt_a}", "{opt_b}", "{opt_c}"],
                            "answer": "{gold}"}).get("quiz")
    form = PromptForm.of(t)
    recs = t.records("train")[:4]
    res = score_multiple_choice(model, tok, recs, form=form, batch_size=3)
    for rec, q in zip(recs, res.per_question):
        prefix = tok(f"Question: {rec.stem}\nAnswer:", add_special_tokens=False)["input_ids"]
        hand = [_hand_loglik(model, prefix, tok(" " + c, add_special_tokens=False)["input_ids"]) for c in rec.choices]
        assert q.scores == pytest.approx(hand, abs=1e-4)
        assert q.pred == max(range(3), key=lambda k: hand[k])
        assert q.pred_norm == max(range(3), key=lambda k: hand[k] / len(rec.choices[k]))  # lm-eval: the option alone
    assert res.acc_norm is not None and set(res.metrics) == {"acc", "acc_norm"}
    naive = score_multiple_choice(model, tok, recs, form=form, batched=False)
    for a, b in zip(naive.per_question, res.per_question):
        assert a.scores == pytest.approx(b.scores, abs=1e-4)


def test_training_targets_follow_the_scoring_form(tiny, tmp_path):
    _, tok = tiny
    r = TaskRegistry({"arc-easy": {"scoring": "choice"}})
    rec = r.get("arc-easy").records("train")[0]
    ids, labels = PromptForm.of(r.get("arc-easy")).training_example(tok, rec)
    target = [i for i, l in zip(ids, labels) if l != -100]
    assert tok.decode(target) == " " + rec.choices[rec.answer]
    label_form = PromptForm.of(TaskRegistry().get("arc-easy"))
    ids, labels = label_form.training_example(tok, rec)
    assert tok.decode([i for i, l in zip(ids, labels) if l != -100]).startswith(" " + rec.options[rec.answer])
    m = TaskRegistry().get("mawps")
    g = m.records("train")[0]
    ids, labels = PromptForm.of(m).training_example(tok, g)
    assert tok.decode([i for i, l in zip(ids, labels) if l != -100], skip_special_tokens=True) == g.completion


def test_batched_greedy_decoding_matches_per_question_generate(tiny_model_copy, tiny):
    from llgbm_cli.tasks.generation import greedy_generate

    model, tok = tiny_model_copy, tiny[1]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a sharper head than the random init, so greedy outputs vary
        model.get_output_embeddings().weight.add_(torch.randn(model.get_output_embeddings().weight.shape, generator=g) * 0.5)
    texts = ["Tom has 3 apples.", "A much longer question about how many marbles are left in the bag after lunch?",
             "Two.", "Count the birds on the wire please"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    batched = greedy_generate(model, tok, prompts, max_new_tokens=8, batch_size=4)
    ref = []
    for p in prompts:
        out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        ids = out[0, len(p):].tolist()
        ids = ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids
        ref.append(tok.decode(ids, skip_special_tokens=True).strip())
    assert batched == ref and len(set(batched)) > 1
    # stop sequences cut the text
    stop_at = batched[1][2:5]
    cut = greedy_generate(model, tok, prompts[1:2], max_new_tokens=8, stop=[stop_at])
    assert cut[0] == batched[1][: batched[1].index(stop_at)].strip()


@pytest.mark.parametrize("last_layers", [1, None])
def test_many_adapters_decode_as_each_alone_with_the_base_layers_below_them_shared(tiny_model_copy, tiny,
                                                                                    last_layers):
    import llgbm_cli.tasks.generation as generation
    from llgbm_cli.adapters import random_adapter
    from llgbm_cli.anatomy import lowest_adapted_layer
    from llgbm_cli.lora.patch import patch_adapters
    from llgbm_cli.tasks.generation import (greedy_generate, greedy_generate_adapters, score_generative,
                                            score_generative_adapters)

    model, tok = tiny_model_copy, tiny[1]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a sharper head than the random init, so greedy outputs vary
        model.get_output_embeddings().weight.add_(torch.randn(model.get_output_embeddings().weight.shape, generator=g) * 0.5)
    texts = ["Tom has 3 apples.", "A much longer question about how many marbles are left in the bag after lunch?",
             "Two.", "Count the birds on the wire please", "Five cats"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    adapters = [random_adapter(model, seed=s, std=0.5, last_layers=last_layers) for s in range(3)]
    start = lowest_adapted_layer(model, adapters[0].modules)
    assert (start > 0) == (last_layers is not None)
    alone = []
    for ad in adapters:
        with patch_adapters(model, [ad]):
            alone.append(greedy_generate(model, tok, prompts, max_new_tokens=8, batch_size=2))
    recorded = []
    real = generation._decode_batch
    generation._decode_batch = lambda *a, **k: recorded.append(k.get("lower")) or real(*a, **k)
    try:
        shared = greedy_generate_adapters(model, tok, adapters, prompts, max_new_tokens=8, batch_size=2)
    finally:
        generation._decode_batch = real
    assert shared == alone
    assert len({tuple(x) for x in alone}) == 3  # the adapters decode differently
    assert all((lo is not None) == (start > 0) for lo in recorded) and recorded  # shared only when possible
    assert greedy_generate_adapters(model, tok, [], prompts) == []
    t = TaskRegistry().get("mawps")
    form = PromptForm.of(t)
    recs = t.sample("test", 3, seed=0)
    many = score_generative_adapters(model, tok, adapters, recs, form, batch_size=2)
    for ad, got in zip(adapters, many):
        with patch_adapters(model, [ad]):
            ref = score_generative(model, tok, recs, form, batch_size=2)
        assert got.outputs == ref.outputs and got.accuracy == ref.accuracy


def test_generative_scoring_reports_the_metric(tiny):
    from llgbm_cli.tasks.evaluate import score_records

    model, tok = tiny
    t = TaskRegistry().get("mawps")
    form = PromptForm.of(t)
    res = score_records(model, tok, form, t.sample("test", 3, seed=0), generate_batch_size=3)
    assert res.form.metric == "number" and res.n == 3 and set(res.metrics) == {"number"}
    assert 0.0 <= res.accuracy <= 1.0 and len(res.result.outputs) == 3


def test_zoo_refuses_teachers_trained_on_another_form(cli, tiny_project):
    text = tiny_project.read_text().replace("steps = 6\nwarmup_steps = 2\ncheckpoints = 2", "steps = 2\nwarmup_steps = 1\ncheckpoints = 1")
    tiny_project.write_text(text)
    r = cli("--project", tiny_project, "--quiet", "zoo", "build", "--tasks", "boolq")
    assert r.exit_code == 0, r.stderr
    tiny_project.write_text(text.replace("[data]\n", '[data]\nscoring = "choice"\n'))
    r = cli("--project", tiny_project, "--quiet", "zoo", "build", "--tasks", "boolq")
    assert r.exit_code == 2 and "trained on another task definition" in r.stderr and "--force" in r.stderr
    r = cli("--project", tiny_project, "--quiet", "--json", "zoo", "build", "--tasks", "boolq", "--force")
    assert r.exit_code == 0 and json.loads(r.stdout)["built"] == 1


def test_config_docs_task_examples_are_valid(tmp_path):
    import re
    import tomllib

    from conftest import REPO

    text = (REPO / "docs" / "config.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    from llgbm_cli.config import LlgbmConfig

    from llgbm_cli.config import load_config

    kinds, others, extending = set(), 0, 0
    for b in blocks:
        data = tomllib.loads(b)
        if "extends" in data:  # the `extends` example: its start, written beside the file it extends
            (tmp_path / "example.toml").write_text(b)
            (tmp_path / data["extends"]).write_text((REPO / "profiles" / data["extends"]).read_text())
            load_config(tmp_path / "example.toml")
            extending += 1
            continue
        if "tasks" not in data:  # another section's example (per-task teacher settings): a valid config
            cfg = LlgbmConfig.model_validate(data)
            others += bool(cfg.zoo.per_task)
            continue
        for name, table in data["tasks"].items():
            t = TaskRegistry({name: TaskSpec(**table)}).get(name)
            kinds.add(t.kind)
    assert kinds == {"multiple_choice", "generate"} and others == 1 and extending == 1


def test_arithmetic_family_ships_with_seeded_splits():
    """The arithmetic sets are presets: generative ones train on the answer sentence and are scored by
    number; AQuA and MathQA are five-option multiple choice parsed from their instruction."""
    from llgbm_cli.data import pack_manifest

    reg = TaskRegistry()
    man = pack_manifest()["datasets"]
    for name in ("addsub", "multiarith", "singleeq", "svamp", "gsm8k"):
        t = reg.get(name)
        train, test = t.records("train"), t.records("test")
        assert t.kind == "generate" and t.metric == "number"
        assert len(train) == man[name]["counts"]["train"] and len(test) == man[name]["counts"]["test"]
        assert not {r.id for r in train} & {r.id for r in test}
        r = train[0]
        assert r.completion == f"The answer is {r.gold}." and r.prompt and "seed 1234" in man[name]["note"]
    for name in ("aqua", "mathqa"):
        t = reg.get(name)
        for r in t.records("test"):
            assert r.options == ("A", "B", "C", "D", "E") and len(r.choices) == 5 and all(r.choices)
            assert r.stem and "Answer format: A/B/C/D/E" in r.prompt and 0 <= r.answer < 5


def test_letter_options_parse():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bdp", Path(__file__).parents[1] / "scripts" / "build_datapack.py")
    bdp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bdp)
    p = bdp.letter_mc("How much is 2 + 2? Answer Choices: (A) 3 (B) 4 (C) 5.5 (D) -1 (E) none", "b")
    assert p["stem"] == "How much is 2 + 2?" and p["choices"] == ["3", "4", "5.5", "-1", "none"] and p["answer"] == 1
    q = bdp.letter_mc("a rate is 5 % . find x ? The options: a ) 38 , b ) 27.675 , c ) 30 , d ) 1,200 , e ) none", "c")
    assert q["choices"] == ["38", "27.675", "30", "1,200", "none"] and q["answer"] == 2
    with pytest.raises(ValueError):
        bdp.letter_mc("no options here", "A")
