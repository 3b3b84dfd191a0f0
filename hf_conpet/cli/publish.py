"""`hf-conpet push DIR REPO_ID` and `hf-conpet demo DIR|REPO_ID`: a finished run to the Hub, or onto a page."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import CliError, one_line
from .inspect import _system_dir


def cmd_push(args: argparse.Namespace) -> int:
    """One commit of the system's layout (manifest, adapters, selector, examples, card, plot) to
    `REPO_ID`; the token comes from where `huggingface_hub` looks (HF_TOKEN, `hf auth login`) and is
    never printed."""
    from ..hub import HubPushError, LayoutError, _endpoint, push_folder

    folder = _system_dir(args.dir)
    try:
        commit = push_folder(folder, args.repo_id, private=True if args.private else None, revision=args.revision,
                             commit_message=args.message)
    except (HubPushError, LayoutError) as error:
        raise CliError(one_line(error), status=1) from None
    url = f"{_endpoint(None)}/{args.repo_id}" + (f"/tree/{args.revision}" if args.revision else "")
    print(f"pushed {folder} to {url}" + (f" (commit {commit.oid[:12]})" if getattr(commit, "oid", None) else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The Space's page on a system: a local folder (a run's output or a saved system) or a Hub repo."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from .. import demo
    except ImportError as error:
        raise CliError(f"the demo needs gradio: pip install 'hf-conpet[demo]' ({one_line(error)})") from None
    source = str(_system_dir(args.source)) if Path(args.source).expanduser().exists() else args.source
    try:
        model, tokenizer = demo.load_system(source)
    except demo.SystemNotFoundError as error:
        raise CliError(one_line(error)) from None
    except (OSError, ValueError) as error:
        raise CliError(f"cannot load the system: {type(error).__name__}: {one_line(error)}") from None
    page = demo.build_demo(model, tokenizer)
    print(f"serving {source} on http://{args.host}:{args.port}" + (" (and a public share link)" if args.share else ""))
    page.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True)
    return 0
