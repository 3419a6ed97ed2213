"""``alignflow chat MODEL_DIR``: talk to a model in the terminal, its answers streamed as they are generated.

Replies go to stdout, one per turn; notes and errors to stderr, so a script piped into stdin gets just
the answers. A bad command or file is an ``error: ...`` line and the chat goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import typer

from align_core.errors import UsageError
from alignflow.commands.generate import MaxNewTokens, Seed, Temperature, TopK, TopP, TrustRemoteCode

COMMANDS = "/reset, /system TEXT, /image PATH, /audio PATH, /exit"


def chat_command(
    model_dir: Path = typer.Argument(..., help="a saved model folder (weights, config, tokenizer; processor)"),
    system: str | None = typer.Option(None, "--system", help="the system prompt"),
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    top_k: TopK = 0,
    seed: Seed = 0,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Chat with the model through its chat template, keeping the history. Lines starting with / are
    commands: /reset clears the history, /system TEXT sets the system prompt (and clears the history),
    /image PATH and /audio PATH attach a file to your next message (models with a processor), /exit or
    end of input quits. Reads stdin line by line, so a script can be piped in."""
    from transformers.utils import logging as hf_logging

    from align_core.generation import ChatSession, SamplingSettings
    from alignflow.cli import fail_usage, one_line

    hf_logging.disable_progress_bar()  # the chat's first line should be the model's, not a loading bar
    settings = SamplingSettings(max_new_tokens, temperature, top_p, top_k, seed=seed)
    try:
        session = ChatSession.load(model_dir, settings, system, trust_remote_code)
    except UsageError as error:
        fail_usage(one_line(error))
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo(f"chatting with {model_dir}; commands: {COMMANDS}; Ctrl-D quits", err=True)
    try:
        run_chat(session, input_lines("> " if interactive else ""))
    except KeyboardInterrupt:
        typer.echo("", err=True)
        raise typer.Exit(130) from None


def input_lines(prompt: str) -> Iterator[str]:
    """Lines typed or piped in, until end of input."""
    while True:
        try:
            yield input(prompt)
        except EOFError:
            if prompt:  # a terminal: the shell's prompt starts on a line of its own
                typer.echo("", err=True)
            return


def run_chat(session, lines: Iterable[str]) -> None:
    """Answer each line with the session, or carry out its command, until /exit or the lines run out."""
    from alignflow.cli import one_line

    for line in lines:
        text = line.strip()
        if not text:
            continue
        try:
            if text.startswith("/"):
                if not run_command(session, text):
                    return
                continue
            session.reply(text, on_text=write_now)
            write_now("\n")
        except UsageError as error:
            typer.echo(f"error: {one_line(error)}", err=True)


def run_command(session, text: str) -> bool:
    """Carry out one slash command; False to end the chat."""
    name, _, argument = text.partition(" ")
    argument = argument.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        typer.echo("(history cleared)", err=True)
    elif name == "/system":
        session.set_system(argument)
        typer.echo(f"(system prompt {'set' if argument else 'removed'}; history cleared)", err=True)
    elif name in ("/image", "/audio"):
        if not argument:
            raise UsageError(f"{name} needs a file: {name} PATH")
        session.attach(name[1:], argument)
        typer.echo(f"({name[1:]} attached to your next message)", err=True)
    else:
        raise UsageError(f"unknown command {name}; commands: {COMMANDS}")
    return True


def write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_command)
