"""`kimi-local chat`: the terminal chat app, on a model loaded here or attached to a running server."""

from __future__ import annotations

import argparse

from kimi_local.commands.common import add_model_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat with the model in the terminal (with live telemetry)",
        description="Chat with Kimi-K2 in a terminal app: streamed Markdown answers, a side panel with speed, "
        "memory, expert cache and a per-layer expert heat map, editable settings and saved conversations. "
        "Without --model or a configured model it runs the built-in demo model (random weights). With --url it "
        "attaches to a running `kimi-local serve`, so one loaded model serves both. Keys: Enter sends, "
        "Ctrl+J new line, Esc stops, Ctrl+R regenerates, Ctrl+N new conversation, F3 copies the last answer, "
        "Ctrl+S saves, Ctrl+O opens a saved conversation, F2 settings, Ctrl+Q quits.",
    )
    source = p.add_mutually_exclusive_group()
    add_model_argument(source)
    source.add_argument("--url", metavar="URL",
                        help="attach to a running `kimi-local serve` at URL (e.g. http://127.0.0.1:8000)")
    p.add_argument("--api-key", metavar="KEY", default=None,
                   help="API key for --url (default: the configured server.api_key)")
    p.add_argument("--conversations-dir", metavar="DIR", default=None,
                   help="where conversations are saved (default: the user data directory)")
    from kimi_local import settings

    if hasattr(settings, "add_config_flags"):
        settings.add_config_flags(p, sections=("engine", "cache", "tui"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kimi_local.commands.common import ensure_demo_checkpoint
    from kimi_local.tui.app import KimiChatApp
    from kimi_local.tui.chat_settings import ChatSettings
    from kimi_local.tui.opening import open_local, open_remote
    from kimi_local.tui.store import ConversationStore, default_conversations_dir

    from kimi_local.settings import resolve_settings

    # The model directory is not checked here: a missing one is reported inside the app, like other load errors.
    config = resolve_settings(args, check_model=False).config
    try:
        settings = ChatSettings.from_config(config.tui)
    except ValueError as exc:
        raise ValueError(f"[tui] settings: {exc}") from None
    store = ConversationStore(args.conversations_dir or default_conversations_dir())
    if args.url:
        open_backend = open_remote(args.url, args.api_key if args.api_key is not None else config.server.api_key)
        what = f"Connecting to {args.url}"
    else:
        if not (args.model or config.model):
            ensure_demo_checkpoint()  # first use: written here, with a progress bar, before the app takes the screen
        open_backend = open_local(args.model, config)
        what = f"Loading {args.model or config.model or 'the built-in demo model (random weights)'}"
    app = KimiChatApp(open_backend, settings, store, what=what)
    app.run()
    return 1 if app.load_error else 0
