"""Reading a frozen mix snapshot for training, in TRL's conversational prompt/completion form.

Training reads only the snapshot folder (``train.parquet`` with a ``messages`` column), never the live
store, so a run is reproducible from its folder. Each conversation becomes ``prompt`` = every turn
before the final assistant turn and ``completion`` = that final assistant turn. TRL renders both with
the model's own chat template and masks the prompt (``completion_only_loss``), so the loss falls on
the assistant's answer and its end-of-turn token only. Earlier assistant turns of a multi-turn
conversation are context, not targets. This works with any chat template; TRL's
``assistant_only_loss`` would need ``{% generation %}`` markers that ChatML templates such as
SmolLM2's lack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import ForgetlessError

SNAPSHOT_FILE = "train.parquet"
_ROLES = ("system", "user", "assistant")


def snapshot_file(data_dir: str | Path) -> Path:
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ForgetlessError(f"data folder not found: {data_dir} (give a frozen mix snapshot folder from `mix --out`)")
    path = folder / SNAPSHOT_FILE
    if not path.is_file():
        raise ForgetlessError(f"{folder} holds no {SNAPSHOT_FILE}; give a frozen mix snapshot folder from `mix --out`")
    return path


def _check_conversation(row: int, messages: Any) -> list[dict[str, str]]:
    where = f"{SNAPSHOT_FILE} row {row}"
    if not isinstance(messages, list) or not messages:
        raise ForgetlessError(f"{where}: messages must be a non-empty list of {{role, content}} turns")
    turns = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in _ROLES or not isinstance(content, str):
            raise ForgetlessError(f"{where}: every turn needs a role ({', '.join(_ROLES)}) and text content")
        turns.append({"role": role, "content": content})
    if turns[-1]["role"] != "assistant":
        raise ForgetlessError(f"{where}: the last turn must be the assistant's (the training target)")
    if not any(turn["role"] == "user" for turn in turns[:-1]):
        raise ForgetlessError(f"{where}: no user turn before the assistant's answer")
    return turns


def read_conversations(data_dir: str | Path) -> list[list[dict[str, str]]]:
    """The ``messages`` column of a snapshot, checked; other columns (source, origin ids) are not read."""
    import pyarrow.parquet as pq

    path = snapshot_file(data_dir)
    try:
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow raises several types for a file that is not parquet
        raise ForgetlessError(f"cannot read {path}: {str(error).splitlines()[0]}") from error
    if "messages" not in schema.names:
        raise ForgetlessError(f"{path} has no 'messages' column (found: {', '.join(schema.names) or 'none'})")
    rows = pq.read_table(path, columns=["messages"]).column("messages").to_pylist()
    if not rows:
        raise ForgetlessError(f"{path} holds no conversations")
    return [_check_conversation(index, messages) for index, messages in enumerate(rows)]


def to_prompt_completion(conversations: list[list[dict[str, str]]]) -> Any:
    """A ``datasets.Dataset`` in TRL's conversational prompt/completion form (see the module docstring)."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [turns[:-1] for turns in conversations],
        "completion": [turns[-1:] for turns in conversations],
    })


def require_chat_template(tokenizer: Any, model_spec: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ForgetlessError(
            f"model '{model_spec}' has no chat template: training renders conversations with the model's chat "
            "template, so pick a chat model (e.g. smollm2-135m-instruct) or a model folder whose tokenizer has one")
