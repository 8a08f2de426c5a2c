"""`forgetless engine start|status|stop`: the workspace's managed vLLM servers (core/engines/server.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from core.cli.common import Parser, Stages, add_stage, emit
from core.engines.server import ManagedServer, ensure_server, running_servers, server_state, stop_servers


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _as_dict(server: ManagedServer) -> dict[str, object]:
    return {"key": server.key, "url": server.url, "served": server.served, "pid": server.pid,
            "started_at": server.started_at, "uptime_s": round(time.time() - server.started_at, 1),
            "log": str(server.log)}


def cmd_start(args: argparse.Namespace) -> None:
    def on_phase(message: str) -> None:
        if os.environ.get("FORGETLESS_NO_PROGRESS") != "1":  # so an error stays the only stderr line in tests
            print(message, file=sys.stderr, flush=True)

    server = ensure_server(args.workspace, args.model, on_phase=on_phase, timeout_s=args.timeout)
    emit(_as_dict(server), args.json, server.url)


def cmd_status(args: argparse.Namespace) -> None:
    servers = running_servers(args.workspace)
    rows = [{**_as_dict(server), "state": server_state(server)} for server in servers]
    rows = [{**row, "ready": row["state"] == "ready"} for row in rows]
    if args.json:
        emit({"servers": rows}, True, "")
        return
    if not rows:
        print(f"no vLLM server is running for {args.workspace}")
    for row in rows:
        print(f"{row['url']}  {row['served']}  {row['state']}  pid {row['pid']}  up {_uptime(row['uptime_s'])}  "
              f"log {row['log']}")


def cmd_stop(args: argparse.Namespace) -> None:
    stopped = stop_servers(args.workspace, args.key)
    if args.json:
        emit({"stopped": [_as_dict(server) for server in stopped]}, True, "")
        return
    if not stopped:
        print(f"no vLLM server is running for {args.workspace}")
    for server in stopped:
        print(f"stopped the vLLM server for {server.served} at {server.url} (pid {server.pid})")


def add_engine_stage(stages: Stages) -> None:
    help_text = "start, list or stop the workspace's managed vLLM servers"
    engine = stages.add_parser("engine", help=help_text, description=help_text)
    actions = engine.add_subparsers(dest="action", required=True, parser_class=Parser)
    start = add_stage(actions, "start", "start (or reuse) a vLLM server for MODEL and print its URL")
    start.add_argument("model", metavar="MODEL", help="an alias, a model folder, a .gguf file or a hub id")
    start.add_argument("--timeout", type=float, default=900, help="seconds to wait for the server to answer")
    start.set_defaults(handler=cmd_start)
    status = add_stage(actions, "status", "list the running vLLM servers (URL, model, pid, uptime, log)")
    status.set_defaults(handler=cmd_status)
    stop = add_stage(actions, "stop", "stop the running vLLM servers")
    stop.add_argument("--key", help="stop only this server (its key, from `forgetless engine status --json`)")
    stop.set_defaults(handler=cmd_stop)
