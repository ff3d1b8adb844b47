import pytest

from llgbm_cli.data import PACK_DIR, check_dataset, load_dataset, sample
from llgbm_cli.errors import InputError


def test_pack_is_attributed_and_small():
    assert (PACK_DIR / "DATA_LICENSE").read_text().startswith("Attribution License (ODC-By)")
    total = sum(p.stat().st_size for p in PACK_DIR.iterdir())
    assert total < 3 * 1024 * 1024


@pytest.mark.parametrize("name", ["arc-easy", "arc-challenge", "boolq", "openbookqa", "piqa"])
def test_records_are_well_formed(name):
    for split in ("train", "test"):
        recs = load_dataset(name, split)
        assert len(recs) >= 400
        for r in recs[:50]:
            assert 0 <= r.answer < len(r.options)
            assert "Answer format:" in r.prompt
            if r.choices is not None:
                assert len(r.choices) == len(r.options) and all(r.choices)


def test_piqa_split_is_disjoint():
    tr = {r.prompt for r in load_dataset("piqa", "train")}
    te = {r.prompt for r in load_dataset("piqa", "test")}
    assert not tr & te


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(InputError) as e:
        check_dataset("arc-esy")
    assert "arc-easy" in e.value.message and "boolq" in e.value.message
    assert check_dataset("ARC-Easy") == "arc-easy"


def test_sample_is_seeded():
    a = [r.id for r in sample("boolq", "test", 10, seed=1)]
    b = [r.id for r in sample("boolq", "test", 10, seed=1)]
    c = [r.id for r in sample("boolq", "test", 10, seed=2)]
    assert a == b and a != c
