import json

import pytest

from llgbm_cli.deltas.probes import list_probe_sets, load_probes, read_probe_texts
from llgbm_cli.errors import InputError
from llgbm_cli.tasks.registry import builtin_registry


def test_generic_set_is_varied_and_templated(tiny):
    _, tok = tiny
    ps = load_probes("generic", tok)
    assert len(ps) >= 8 and len(set(ps.texts)) == len(ps.texts)
    first = tok.decode(ps.token_ids[0])
    assert ps.texts[0] in first and first.rstrip().endswith("assistant")  # chat template + generation prompt
    assert ps.prefix_len > 0  # the template's system turn is shared
    assert ps.input_ids.shape[0] == len(ps) and (ps.attention_mask.sum(1) == ps.lengths).all()


def test_fingerprint_tracks_final_tokens(tiny):
    _, tok = tiny
    a, b = load_probes("generic", tok, count=4), load_probes("generic", tok, count=4)
    assert a.fingerprint == b.fingerprint
    assert load_probes("generic", tok, count=5).fingerprint != a.fingerprint
    assert load_probes("generic", tok, count=4, chat_template=False).fingerprint != a.fingerprint
    short = load_probes("generic", tok, count=4, max_length=6)
    assert all(len(t) <= 6 for t in short.token_ids)
    assert short.token_ids[0] == a.token_ids[0][-6:]  # truncation keeps the last tokens


def test_task_sets_and_listing(tiny):
    _, tok = tiny
    reg = builtin_registry()
    names = list_probe_sets(reg)
    assert "generic" in names and "task:arc-easy" in names and "task:piqa" in names
    ps = load_probes("task:boolq", tok, count=3, tasks=reg)
    assert len(ps) == 3 and ps.texts == read_probe_texts("task:boolq", count=3, tasks=reg)
    # The task sets come from the registry the caller passes: without one there are none.
    assert "generic" in list_probe_sets() and not any(n.startswith("task:") for n in list_probe_sets())
    with pytest.raises(InputError, match="unknown probe set 'task:boolq'; valid: generic, or a"):
        read_probe_texts("task:boolq")


def test_user_files(tiny, tmp_path):
    _, tok = tiny
    txt = tmp_path / "p.txt"
    txt.write_text("first probe\n\nsecond probe\n")
    assert load_probes(str(txt), tok).texts == ["first probe", "second probe"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps("plain string") + "\n" + json.dumps({"text": "an object"}) + "\n")
    assert load_probes(str(jl), tok, chat_template=False).texts == ["plain string", "an object"]


@pytest.mark.parametrize(
    "content,match",
    [("\n  \n", "empty"), ('{"nope": 1}\n', "text"), ("not json\n", "not JSON")],
)
def test_bad_files(tmp_path, content, match):
    p = tmp_path / ("p.jsonl" if "{" in content or "json" in content else "p.txt")
    p.write_text(content)
    with pytest.raises(InputError, match=match):
        read_probe_texts(str(p))


def test_unknown_names_list_valid_ones():
    reg = builtin_registry()
    with pytest.raises(InputError, match="valid: generic, task:arc-easy"):
        read_probe_texts("generik", tasks=reg)
    with pytest.raises(InputError, match="unknown probe set 'task:nope'"):
        read_probe_texts("task:nope", tasks=reg)
    with pytest.raises(InputError, match="not found"):
        read_probe_texts("missing/probes.txt")


def test_several_tasks_share_a_probe_set():
    from llgbm_cli.deltas.probes import read_probe_texts
    from llgbm_cli.errors import InputError

    reg = builtin_registry()
    one = read_probe_texts("task:arc-easy", count=6, tasks=reg)
    two = read_probe_texts("task:arc-easy,gsm8k", count=6, tasks=reg)
    assert len(two) == 6 and two[0::2] == read_probe_texts("task:arc-easy", count=3, tasks=reg)
    assert two[1::2] == read_probe_texts("task:gsm8k", count=3, tasks=reg) and len(one) == 6
    with pytest.raises(InputError, match="task:nope"):
        read_probe_texts("task:arc-easy,nope", tasks=reg)
