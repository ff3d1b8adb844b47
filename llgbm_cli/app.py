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

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the CLI; a usage error (unknown command or option, missing argument) is one
        ``error:`` line, a ``hint:`` line and, under ``--json``, the error object, exit 2."""
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        argv = list(args) if args is not None else sys.argv[1:]
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except Exception as e:
            kinds = _cli_kinds(e)
            if "NoArgsIsHelpError" in kinds:  # bare `llgbm`: the help text
                e.show()
                sys.exit(e.exit_code)
            if "ClickException" in kinds:
                message, hint = _usage_message(e)
                _print_error(message, hint, e.exit_code, _ArgvState(argv))
                sys.exit(e.exit_code)
            if "Abort" in kinds:
                sys.stderr.write("error: aborted\n")
                sys.exit(EXIT_FAILED)
            raise
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)

    def invoke(self, ctx) -> Any:
        try:
            return super().invoke(ctx)
        except LlgbmError as e:
            state = _state(ctx)
            _traceback_if_verbose(state)
            _print_error(e.message, e.hint, e.exit_code, state)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            state = _state(ctx)
            _print_error("interrupted; finished outputs were kept and half-written ones removed", None, 130, state)
            ctx.exit(130)
        except Exception as e:  # an internal error: one line, traceback with -v
            if _is_cli_control(e):  # exit, abort, usage errors: main() prints them
                raise
            state = _state(ctx)
            _traceback_if_verbose(state)
            known = as_input_error(e)
            if known is not None:
                _print_error(known.message, known.hint, known.exit_code, state)
                ctx.exit(known.exit_code)
            _print_error(f"internal error: {type(e).__name__}: {e}", "run again with -v for the traceback",
                         EXIT_FAILED, state)
            ctx.exit(EXIT_FAILED)


def _state(ctx) -> Optional["State"]:
    """The global options; before the root callback ran (a usage error), read from the parsed flags."""
    if isinstance(ctx.obj, State):
        return ctx.obj
    p = ctx.params or {}
    return State(p.get("project"), bool(p.get("verbose")), bool(p.get("quiet")), bool(p.get("json_out")))


def _traceback_if_verbose(state: Optional["State"]) -> None:
    """-v adds the traceback above the error line; the exit code stays the same."""
    if state is not None and state.verbose:
        import traceback

        traceback.print_exc(file=sys.stderr)


class _ArgvState:
    """What :func:`_print_error` needs to know when the command line did not parse."""

    def __init__(self, argv: list[str]):
        head = argv[: argv.index("--")] if "--" in argv else argv
        self.json = "--json" in head
        self.emitted = False


def _usage_message(e) -> tuple[str, str]:
    """A click usage error as (one line naming the command, hint)."""
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else "llgbm"
    message = " ".join(str(e.format_message()).split())
    return f"{path}: {message}", f"see `{path} --help`"


def _is_cli_control(e: BaseException) -> bool:
    return bool(_cli_kinds(e))


def _cli_kinds(e: BaseException) -> set[str]:
    """The CLI framework's exception classes ``e`` is an instance of (by name; typer may use click or
    its own vendored copy, so they are recognised by module)."""
    return {c.__name__ for c in type(e).__mro__ if c.__module__.split(".")[0] in ("click", "typer")}


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
