"""Run one stage command in this process and record which params keys it reads (for test_dvc_dependencies).

usage: python tests/trace_params.py OUT.json STAGE [ARGS...]

Reads are recorded from the moment the params are loaded and validated (the schema's own validation looks at
keys that no output depends on), by wrapping attribute access on the schema's dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from pipeline import config as schema
from stages import common
from stages.__main__ import cli

read: set[str] = set()


def _trace(cls: type, prefix: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    original = cls.__getattribute__

    def getattribute(self, name):
        value = original(self, name)
        if name in names and not dataclasses.is_dataclass(value):
            read.add(prefix + name)
        return value

    cls.__getattribute__ = getattribute


def _load_params_then_trace(params_path: str) -> schema.Config:
    config = load_params(params_path)
    for field in dataclasses.fields(schema.Config):
        section = getattr(config, field.name)
        if dataclasses.is_dataclass(section):
            _trace(type(section), f"{field.name}.")
    _trace(schema.Config, "")
    return config


load_params = common.load_params
common.load_params = _load_params_then_trace  # stage modules are imported on use, so they bind this one

out, args = sys.argv[1], sys.argv[2:]
try:
    cli.main(args, standalone_mode=False)
finally:
    with open(out, "w") as f:
        json.dump(sorted(read), f)
