"""The `llgbm` Typer root: global options, error handling, command-group registration.

Global options (``--project/-p``, ``-v/--verbose``, ``--quiet``, ``--json``) are declared here
once and may be written anywhere on the command line (``llgbm merge ... --json`` works): they
are hoisted in front of the subcommand before parsing. Command modules are thin and import
their services (and torch) lazily, so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from .errors import EXIT_FAILED, LlgbmError, as_input_error, error_object

# Flags that belong to the root, wherever they appear; value-taking ones listed separately.
_GLOBAL_FLAGS = {"-v", "--verbose", "--quiet", "-q", "--json"}
_GLOBAL_VALUE = {"--project", "-p"}


def hoist_globals(args: list[str]) -> list[str]:
    """Move global options to the front so they parse at the root, whatever their position."""
    front, rest = [], []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        if a in _GLOBAL_FLAGS:
            front.append(a)
        elif a in _GLOBAL_VALUE and i + 1 < len(args):
            front.extend([a, args[i + 1]])
            i += 1
        elif a.startswith("--project="):
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


class LlgbmGroup(TyperGroup):
    """Root group: hoists global flags and turns LlgbmError into one line + exit code."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_globals(list(args)))

    def invoke(self, ctx) -> Any:
        state = None
        try:
            return super().invoke(ctx)
        except LlgbmError as e:
            state = ctx.obj if isinstance(ctx.obj, State) else None
            if state is not None and state.verbose:
                raise
            _print_error(e.message, e.hint, e.exit_code, state)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            state = ctx.obj if isinstance(ctx.obj, State) else None
            _print_error("interrupted; finished outputs were kept and half-written ones removed", None, 130, state)
            ctx.exit(130)
        except Exception as e:  # an internal error: one line, traceback with -v
            state = ctx.obj if isinstance(ctx.obj, State) else None
            if _is_cli_control(e):  # exit, abort, usage errors: the CLI framework handles them
                if state is not None and state.json and isinstance(getattr(e, "exit_code", None), int) \
                        and e.exit_code != 0 and hasattr(e, "format_message"):
                    _print_json_error(e.format_message(), "see --help", e.exit_code)
                raise
            if state is not None and state.verbose:
                raise
            known = as_input_error(e)
            if known is not None:
                _print_error(known.message, known.hint, known.exit_code, state)
                ctx.exit(known.exit_code)
            _print_error(f"internal error: {type(e).__name__}: {e}", "run again with -v for the traceback",
                         EXIT_FAILED, state)
            ctx.exit(EXIT_FAILED)


def _is_cli_control(e: BaseException) -> bool:
    # Typer may use click or its own vendored copy: recognise their exceptions by module.
    return any(c.__module__.split(".")[0] in ("click", "typer") for c in type(e).__mro__)


def _print_error(message: str, hint: Optional[str] = None, exit_code: int = EXIT_FAILED,
                 state: Optional["State"] = None) -> None:
    """The error on stderr (``error: ...`` and ``hint: ...``); with --json also the error object on stdout."""
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    sys.stderr.flush()
    if state is not None and state.json and not state.emitted:
        _print_json_error(message, hint, exit_code)


def _print_json_error(message: str, hint: Optional[str], exit_code: int) -> None:
    sys.stdout.write(json.dumps(error_object(message, hint, exit_code)) + "\n")
    sys.stdout.flush()


class State:
    """Global options, shared by every command through ``ctx.obj``."""

    def __init__(self, project: Optional[str], verbose: bool, quiet: bool, json_out: bool):
        self.project = project
        self.verbose = verbose
        self.quiet = quiet
        self.json = json_out
        self.emitted = False  # set once the result object is on stdout

    def load_config(self, overrides: Optional[dict[str, Any]] = None, flags: Optional[dict[str, str]] = None):
        """The project config with ``overrides``; ``flags`` names the flag behind each overridden key."""
        from .config import load_config

        return load_config(self.project, overrides, explicit=self.project is not None, flags=flags)


app = typer.Typer(
    cls=LlgbmGroup,
    name="llgbm",
    help="LoRA generators with behavioral matching: zoo, delta cache, training, index, retrieval, merging, eval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: help strings cite config keys as `[section] key`, which rich markup would eat.
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    project: Optional[str] = typer.Option(
        None, "--project", "-p", help="Project file (default: ./llgbm.toml; built-in defaults when absent)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs and full tracebacks."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or informational logs."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout."),
) -> None:
    """llgbm: train and evaluate LoRA generators that match teacher behaviour, not only weights."""
    ctx.obj = State(project, verbose, quiet, json_out)
    level = logging.DEBUG if verbose else (logging.WARNING if quiet or json_out else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:  # third-party loaders chat at INFO (faiss prints which CPU build it picked)
        for noisy in ("faiss", "faiss.loader", "accelerate", "httpx", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet or json_out:  # transformers' own "Loading weights" bars (read when it is first imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import warnings

        warnings.filterwarnings("ignore")


def _register() -> None:
    from .commands import register_all

    register_all(app)


_register()


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="llgbm")


if __name__ == "__main__":  # pragma: no cover
    main()
