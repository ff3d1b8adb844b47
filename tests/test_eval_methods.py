"""The eval method registry: names, families and the list in errors all come from one table."""

from __future__ import annotations

import pytest

from llgbm_cli.errors import InputError
from llgbm_cli.services import eval_methods as EM


def test_fixed_names_and_families():
    assert EM.fixed_names() == ["base", "teacher", "mean-delta", "multitask", "b1", "b2", "compose"]
    assert [m for m in EM.fixed_names() if EM.regime_of(m) == "few-shot"] == ["compose"]
    assert EM.method_of("merge:ties").name == EM.MERGE_PREFIX
    assert EM.method_of("/some/folder").name == EM.FOLDER
    assert [m for m, meth in EM.methods().items() if meth.run] == ["multitask", "b1", "b2"]
    assert {m: EM.methods()[m].section for m in ("multitask", "b1", "b2")} == {
        "multitask": "multitask", "b1": "delta_only", "b2": "delta_only"}


def test_unknown_and_repeated_names(tmp_path):
    with pytest.raises(InputError, match=r"--method bsae: unknown method \(did you mean 'base'\?\); valid: base, "):
        EM.check_methods(["bsae"])
    with pytest.raises(InputError, match="unknown merge strategy"):
        EM.check_methods(["merge:nope"])
    with pytest.raises(InputError, match="given twice"):
        EM.check_methods(["base", "base"])
    with pytest.raises(InputError, match="holds no adapter_config.json"):
        EM.check_methods([str(tmp_path)])
    with pytest.raises(InputError, match="eval.methods: give at least one method"):
        EM.check_methods([], flag="eval.methods")


def test_a_registered_method_becomes_valid():
    @EM.register("zero-test", "a test method")
    def _build(ctx, method, tasks):
        return EM.Built({t: None for t in tasks}, {t: True for t in tasks})

    try:
        assert EM.check_methods(["zero-test", "base"]) == ["zero-test", "base"]
        assert "zero-test" in EM.valid_methods()
        assert EM.method_of("zero-test").build(None, "zero-test", ["a"]).heldout == {"a": True}
    finally:
        del EM.METHODS["zero-test"]
    with pytest.raises(InputError, match="unknown method"):
        EM.check_methods(["zero-test"])
