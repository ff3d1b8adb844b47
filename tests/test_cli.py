import json
import subprocess
import sys

from conftest import REPO


def test_help_lists_groups_and_does_not_import_torch():
    code = (
        "import sys\n"
        "from llgbm_cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "config" in out.stdout and "data" in out.stdout
    assert out.stdout.strip().endswith("NO_TORCH"), out.stdout[-200:]


def test_every_subcommand_help_avoids_torch():
    from llgbm_cli.app import app
    import typer.main

    group = typer.main.get_command(app)
    paths = []
    for name, cmd in group.commands.items():
        paths.append([name])
        for sub in getattr(cmd, "commands", {}) or {}:
            paths.append([name, sub])
    code = (
        "import sys\nfrom llgbm_cli.app import main\n"
        f"for p in {paths!r}:\n"
        "    try:\n        main(p + ['--help'])\n    except SystemExit:\n        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip().endswith("NO_TORCH")


def test_console_script_and_module_entry(tmp_path):
    out = subprocess.run([sys.executable, "-m", "llgbm_cli", "--json", "config", "validate", str(REPO / "llgbm.toml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True


def test_validate_broken_copy_exits_2_listing_every_problem(cli, tmp_path):
    bad = (REPO / "llgbm.toml").read_text().replace("rank = 8", "rank = 0").replace("pool = \"last_token\"", "pool = \"max\"")
    bad += "\n[retrieve2]\nx = 1\n"
    p = tmp_path / "bad.toml"
    p.write_text(bad)
    r = cli("config", "validate", p)
    assert r.exit_code == 2
    assert "lora.rank" in r.stderr and "delta.pool" in r.stderr and "retrieve2: unknown key" in r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout


def test_global_flags_anywhere(cli, tiny_project):
    r = cli("config", "show", "--json", "-p", tiny_project)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["values"]["model.base"] == "tiny-llama"
    r = cli("-p", tiny_project, "config", "show", "--set", "lora.rank=16", "--json")
    d = json.loads(r.stdout)
    assert d["values"]["lora.rank"] == 16 and d["sources"]["lora.rank"] == "flag"
    assert d["sources"]["lora.alpha"] == "file" and d["sources"]["lora.dropout"] == "default"


def test_missing_explicit_project_file(cli, tmp_path):
    r = cli("-p", tmp_path / "nope.toml", "config", "show")
    assert r.exit_code == 2
    assert "nope.toml" in r.stderr and "not found" in r.stderr


def test_bad_flag_value_is_usage_error(cli, tiny_project):
    r = cli("-p", tiny_project, "config", "show", "--set", "lora.rank=-3")
    assert r.exit_code == 2 and "lora.rank" in r.stderr


def test_data_list(cli):
    r = cli("--json", "data", "list")
    rows = json.loads(r.stdout)["tasks"]
    assert [d["name"] for d in rows] == ["arc-easy", "arc-challenge", "boolq", "openbookqa", "piqa", "mawps", "addsub",
                                         "multiarith", "singleeq", "svamp", "gsm8k", "aqua", "mathqa"]
    by = {d["name"]: d for d in rows}
    assert by["mawps"]["kind"] == "generate" and by["mawps"]["metric"] == "number" and by["mawps"]["sizes"]["test"] == 234
    assert by["gsm8k"]["kind"] == "generate" and by["gsm8k"]["sizes"] == {"train": 818, "test": 500}  # one train copy of a test question removed
    assert by["aqua"]["kind"] == "multiple_choice" and by["mathqa"]["sizes"]["test"] == 489
