"""The ``presence-sync`` command: argparse subcommands, errors mapped to
messages and exit codes.

Exit codes: 0 done, or a long-running command (``run``, ``demo``, ``sim *``,
``nfon watch``) stopped by SIGINT or SIGTERM after a clean stop, which is
what a systemd unit expects of ``systemctl stop``; 1 runtime failure; 2 usage
error (argparse, also a simulator's port that is taken); 78 (``EX_CONFIG``)
invalid configuration, which the systemd unit does not restart on; 130 a
one-shot command interrupted by Ctrl-C before it finished; 141 (128 +
SIGPIPE) the reader of its output went away (``... | head``): the command
ends quietly, as a Unix tool killed by SIGPIPE does, and a shell's
``pipefail`` sees it.

The daemon's modules are imported inside the commands, so ``--help`` stays
fast and a simulator command never loads the daemon. (The simulator
modules are imported for their command-line options: about 0.1 s.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from presence_sync import __version__
from presence_sync.errors import EX_CONFIG, ConfigError, PresenceSyncError
from presence_sync.sim import options

__all__ = ["main"]

EX_PIPE = 128 + signal.SIGPIPE
"""A closed pipe on stdout: what a shell reports for a tool SIGPIPE ended."""


def default_config() -> str:
    """``$PRESENCE_SYNC_CONFIG``, else systemd's ``$CONFIGURATION_DIRECTORY/config.yaml``,
    else ``/etc/presence-sync/config.yaml``."""
    explicit = os.environ.get("PRESENCE_SYNC_CONFIG")
    if explicit:
        return explicit
    confdir = os.environ.get("CONFIGURATION_DIRECTORY")
    if confdir:
        return str(Path(confdir.split(":")[0]) / "config.yaml")
    return "/etc/presence-sync/config.yaml"


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=default_config(),
        metavar="FILE",
        help="configuration file (default: %(default)s)",
    )


def _until_stopped(
    work: Coroutine[Any, Any, int],
    stop: Callable[[], None] | None = None,
    *,
    long_running: bool = False,
) -> int:
    """Run ``work`` until it returns, or until SIGINT or SIGTERM asks it to
    stop: ``stop()`` when given (the work then ends by itself), else the work
    is cancelled, and its clean-up runs. A ``long_running`` command (``run``,
    ``demo``, ``sim``, ``nfon watch``) is meant to end that way: exit 0, as
    systemd expects; a one-shot command was interrupted before it finished:
    exit 130. Handlers of our own from the first moment, so Ctrl-C also
    works when whoever started us ignored SIGINT (a shell's background job,
    some CI runners) and a signal during start-up is not lost."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(work)
        signalled = False

        def on_signal() -> None:
            nonlocal signalled
            signalled = True
            if stop is None:
                task.cancel()
            else:
                stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            result = await task
        except asyncio.CancelledError:
            if signalled:
                return 0 if long_running else 130
            raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if signalled and not long_running:
            return 130  # it ended quietly when cancelled, but did not finish
        return result

    return asyncio.run(main())


def _cmd_run(args: argparse.Namespace) -> int:
    from presence_sync.app import STREAM_GRACE, Daemon

    # Not a setting for admins: tests shorten how long the NFON stream may be
    # down before /readyz says not ready.
    grace = float(os.environ.get("PRESENCE_SYNC_STREAM_GRACE", STREAM_GRACE))
    daemon = Daemon(args.config, dry_run=args.dry_run, stream_grace=grace)
    return _until_stopped(daemon.run(), daemon.stop, long_running=True)


def _cmd_nfon_watch(args: argparse.Namespace) -> int:
    from presence_sync.nfon import NfonClient
    from presence_sync.nfon.watch import watch

    if args.sim:
        from presence_sync.demo import watch_simulator

        return _until_stopped(watch_simulator(sys.stdout, rate=args.rate), long_running=True)
    from presence_sync.app import load

    settings = load(args.config).settings
    from presence_sync.ops import logging as ops_logging

    ops_logging.configure(settings.logging.level, settings.logging.format)

    async def go() -> int:
        async with NfonClient.from_settings(settings) as client:
            await watch(client, sys.stdout)
        return 0

    return _until_stopped(go(), long_running=True)


def _serve_tool(args: argparse.Namespace, work: Coroutine[Any, Any, int]) -> int:
    """A simulator until stopped; an address it cannot listen on (a port in
    use, ...) is a usage error of its command, exit 2."""
    from presence_sync.sim.serve import CannotListen

    try:
        return _until_stopped(work, long_running=True)
    except CannotListen as exc:
        parser: argparse.ArgumentParser = args.parser
        parser.error(exc.strerror or str(exc))


def _cmd_check(args: argparse.Namespace) -> int:
    if args.test_call is None:
        from presence_sync.tools import check

        return _until_stopped(
            check.run(args.config, offline=args.offline, credentials=args.credentials)
        )
    from presence_sync.tools import testcall

    return _until_stopped(
        testcall.run(
            args.config,
            args.test_call,
            callee=args.callee,
            url=args.url,
            within=args.timeout,
            credentials=args.credentials,
        )
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text}")
    return value


def _add_check(commands: Any) -> None:
    check = commands.add_parser(
        "check",
        help="check a configuration before starting the service",
        description="Validate the configuration as `run` does (exit 78 with every problem), "
        "then log in to NFON, Microsoft and Slack and resolve every person: a table of "
        "extension, name, Entra user, Slack user and what is missing. Exit 0 only when "
        "everything resolves. With --test-call, prove the whole path for one person while "
        "the daemon runs: NFON rings that extension's phone first (click-to-dial), someone "
        "must answer it there, then NFON dials --callee; the call is cancelled once every "
        "target showed it.",
    )
    _add_config(check)
    check.add_argument(
        "--offline", action="store_true", help="only validate the file: contact nothing"
    )
    check.add_argument(
        "--credentials",
        type=Path,
        metavar="DIR",
        help="read relative *_file secrets from DIR instead of $CREDENTIALS_DIRECTORY "
        "(e.g. the files systemd will hand the service)",
    )
    check.add_argument(
        "--test-call",
        metavar="EXT",
        help="with the daemon running: place a call on behalf of EXT and time each target",
    )
    check.add_argument(
        "--callee",
        metavar="NUMBER",
        help="with --test-call: the number NFON dials once EXT answered (an extension, "
        "or +49... for an outside number); it rings only briefly",
    )
    check.add_argument(
        "--url",
        metavar="URL",
        help="with --test-call: the daemon's address (default: from http.listen)",
    )
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="with --test-call: how long the whole test may take (default: %(default)g)",
    )
    check.set_defaults(func=_cmd_check, check_parser=check)


def _cmd_sim_nfon(args: argparse.Namespace) -> int:
    from presence_sync.sim import nfon

    return _serve_tool(args, nfon.run(args))


def _cmd_sim_slack(args: argparse.Namespace) -> int:
    from presence_sync.sim import slack_serve

    return _serve_tool(args, slack_serve.run(args))


def _cmd_sim_microsoft(args: argparse.Namespace) -> int:
    from presence_sync.sim import graph_cli

    return _serve_tool(args, graph_cli.run(args))


def _cmd_sim_webhook(args: argparse.Namespace) -> int:
    from presence_sync.sim import webhook_cli

    return _serve_tool(args, webhook_cli.run(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from presence_sync.demo import run_demo

    return _serve_tool(args, run_demo(args))


def _cmd_explain(args: argparse.Namespace) -> int:
    from presence_sync.app import load
    from presence_sync.tools import explain

    # Only the rules matter: no secret is read, so an admin's shell without
    # the service's credentials can ask.
    return explain.run(args, functools.partial(load, secrets=lambda _path: False))


def _cmd_status(args: argparse.Namespace) -> int:
    from presence_sync.tools.status import status

    return status(
        args.config,
        args.url,
        args.person,
        not_in_sync=args.not_in_sync,
        out=sys.stdout,
        err=sys.stderr,
    )


def _cmd_resync(args: argparse.Namespace) -> int:
    from presence_sync.tools.status import resync

    return resync(args.config, args.url, out=sys.stdout)


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        metavar="URL",
        help="the daemon's address, e.g. http://127.0.0.1:9477 (default: http.listen of the "
        "configuration)",
    )


def _cmd_pause(args: argparse.Namespace) -> int:
    from presence_sync.tools.pause import run_pause

    return run_pause(args)


def _cmd_resume(args: argparse.Namespace) -> int:
    from presence_sync.tools.pause import run_resume

    return run_resume(args)


def _cmd_version(_: argparse.Namespace) -> int:
    print(f"presence-sync {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presence-sync",
        description="Show NFON phone line state in Teams, Outlook and Slack.",
    )
    parser.add_argument("--version", action="version", version=f"presence-sync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the daemon")
    _add_config(run)
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="change nothing anywhere: every target only logs what it would do",
    )
    run.set_defaults(func=_cmd_run)

    _add_check(commands)

    nfon = commands.add_parser("nfon", help="talk to the NFON CTI API")
    nfon_cmds = nfon.add_subparsers(dest="nfon_command", metavar="COMMAND", required=True)
    watch = nfon_cmds.add_parser("watch", help="print every extension's line and presence live")
    _add_config(watch)
    watch.add_argument(
        "--sim",
        action="store_true",
        help="watch the built-in simulator (no account or configuration needed)",
    )
    watch.add_argument(
        "--rate",
        type=options.positive,
        default=2.0,
        help="with --sim: simulated changes per second",
    )
    watch.set_defaults(func=_cmd_nfon_watch)

    sim = commands.add_parser("sim", help="run a built-in simulator on loopback")
    sim_cmds = sim.add_subparsers(dest="sim_command", metavar="SIMULATOR", required=True)
    sim_nfon = sim_cmds.add_parser("nfon", help="the NFON CTI API")
    from presence_sync.sim import nfon as sim_nfon_module

    sim_nfon_module.add_arguments(sim_nfon)
    sim_nfon.set_defaults(func=_cmd_sim_nfon, parser=sim_nfon)
    sim_slack = sim_cmds.add_parser("slack", help="the Slack Web API (status and DND)")
    from presence_sync.sim import slack_serve as sim_slack_module

    sim_slack_module.add_arguments(sim_slack)
    sim_slack.set_defaults(func=_cmd_sim_slack, parser=sim_slack)

    sim_microsoft = sim_cmds.add_parser(
        "microsoft", help="Entra ID and Microsoft Graph (Teams presence, Outlook) over HTTPS"
    )
    from presence_sync.sim import graph_cli as sim_graph_cli

    sim_graph_cli.add_arguments(sim_microsoft)
    sim_microsoft.set_defaults(func=_cmd_sim_microsoft, parser=sim_microsoft)

    sim_webhook = sim_cmds.add_parser(
        "webhook", help="a receiver for the webhook target that checks signatures"
    )
    from presence_sync.sim import webhook_cli as sim_webhook_cli

    sim_webhook_cli.add_arguments(sim_webhook)
    sim_webhook.set_defaults(func=_cmd_sim_webhook, parser=sim_webhook)

    demo = commands.add_parser(
        "demo", help="the whole system on this machine against the built-in simulators"
    )
    demo.add_argument("--people", type=options.whole(1, 1000), default=8, metavar="N",
                      help="simulated colleagues (default: %(default)s)")  # fmt: skip
    demo.add_argument("--calls-per-minute", type=options.positive, default=12.0, metavar="M",
                      help="random calls a minute, all colleagues together "
                      "(default: %(default)g)")  # fmt: skip
    demo.add_argument("--duration", type=options.positive, default=None, metavar="SECONDS",
                      help="stop after this many seconds (default: until Ctrl-C)")  # fmt: skip
    demo.set_defaults(func=_cmd_demo, parser=demo)

    explain = commands.add_parser(
        "explain", help="which rule decides what each target shows for one person, and why"
    )
    _add_config(explain)
    from presence_sync.tools import explain as explain_module

    explain_module.add_arguments(explain)
    explain.set_defaults(func=_cmd_explain)

    status = commands.add_parser(
        "status",
        help="what the daemon shows for everyone (or one PERSON), from its API; "
        "the stored view when it is down",
    )
    _add_config(status)
    _add_url(status)
    status.add_argument("person", nargs="?", metavar="PERSON", help="e-mail or extension")
    status.add_argument(
        "--not-in-sync", action="store_true", help="only people with a target not in sync"
    )
    status.set_defaults(func=_cmd_status)

    resync = commands.add_parser("resync", help="ask the running daemon for a full resync now")
    _add_config(resync)
    _add_url(resync)
    resync.set_defaults(func=_cmd_resync)

    from presence_sync.tools import pause as pause_tool

    pause = commands.add_parser(
        "pause", help="leave a person alone: their own status back, nothing sent for a while"
    )
    _add_config(pause)
    _add_url(pause)
    pause_tool.add_arguments(pause, pause=True)
    pause.set_defaults(func=_cmd_pause)
    resume = commands.add_parser("resume", help="end a person's pause: sync them again now")
    _add_config(resume)
    _add_url(resume)
    pause_tool.add_arguments(resume, pause=False)
    resume.set_defaults(func=_cmd_resume)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(func=_cmd_version)
    return parser


def _check_combination(args: argparse.Namespace) -> None:
    """Options of ``check`` that only make sense together (usage error, exit 2)."""
    parser: argparse.ArgumentParser = args.check_parser
    if args.credentials is not None and not args.credentials.is_dir():
        # Checked here, not by argparse: the guides' commands name the
        # systemd layout, which a machine checking the docs does not have.
        parser.error(f"argument --credentials: not a directory: {args.credentials}")
    if args.test_call is None:
        given = [o for o, v in (("--callee", args.callee), ("--url", args.url)) if v]
        if given:
            parser.error(f"{' and '.join(given)} only go with --test-call EXT")
        return
    if args.offline:
        parser.error("--test-call places a real call: it cannot be --offline")
    if not args.callee:
        parser.error(
            "--test-call needs --callee NUMBER: once EXT's phone is answered NFON dials "
            "that number (it rings briefly, then the test cancels the call)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "check":
        _check_combination(args)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"presence-sync: invalid configuration\n{exc}", file=sys.stderr)
        return EX_CONFIG
    except PresenceSyncError as exc:
        print(f"presence-sync: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except (BrokenPipeError, BaseExceptionGroup) as exc:
        # Also from inside a TaskGroup (``nfon watch``): a group of them.
        if not _only_broken_pipes(exc):
            raise
        return _output_closed()
    return code


def _only_broken_pipes(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipes(inner) for inner in exc.exceptions)
    return isinstance(exc, BrokenPipeError)


def _output_closed() -> int:
    """Whoever read our output is gone (``| head``): stop quietly. stdout
    now points at /dev/null, so the interpreter's last flush of what is
    still buffered does not fail again with a traceback on the way out."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EX_PIPE
