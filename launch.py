"""Start the Forgetless app: `python launch.py [--workspace DIR] [--data-dir DIR ...] [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

# Set before gradio is imported: it reads these at import time. No telemetry, and the hub stays offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace"),
                        help="folder holding the DuckDB store, model cache and jobs (default: ./workspace)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--data-dir", type=Path, action="append", default=[],
                        help="a folder whose files may be named by path in the app (repeatable); the app reads "
                             "typed paths only there and in the workspace")
    args = parser.parse_args()

    from core.errors import ForgetlessError
    from ui.app import build_app, launch_style

    args.workspace.mkdir(parents=True, exist_ok=True)
    try:
        app = build_app(args.workspace, args.data_dir)
    except ForgetlessError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Forgetless on http://{args.host}:{args.port} (workspace {args.workspace.resolve()})", flush=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        app.launch(server_name=args.host, server_port=args.port, share=False, quiet=True, show_error=True,
                   **launch_style())
    finally:
        _stop_managed_servers(args.workspace)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds through launch(), so the managed servers are stopped as on Ctrl+C


def _stop_managed_servers(workspace: Path) -> None:
    """The vLLM servers the app (or its jobs) started for this workspace hold GiBs of memory: they end with it
    (a job still running on one loses it; rerun the job to resume)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    from ui.views.engine import stop_everything

    stopped = stop_everything(workspace)
    print(f"Stopped {len(stopped)} managed vLLM server{'s' if len(stopped) != 1 else ''} of "
          f"{workspace.resolve()}.", flush=True)


if __name__ == "__main__":
    main()
