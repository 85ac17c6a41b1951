"""The one front door for input files: read (strict YAML and JSON, text, JSON lines), find a
file by name, and one vocabulary for what is wrong.

Every reader raises :class:`sim.errors.UserError` with one line that starts with the file:
``<file>: <where>: <what is wrong; what is allowed> (got <value>)``. Scenarios, topologies,
sweeps, placement and admission JSON, routing traces, request files, profiles and measurement
tables all come through here.
Imports nothing of the engine.
"""

from sim.inputs.find import available, find_file, repo_dir
from sim.inputs.messages import FieldProblem, dotted, got, validation_message
from sim.inputs.read import (
    check_fields,
    csv_table,
    json_lines,
    json_object,
    parse_json,
    read_json,
    read_text,
    read_yaml,
    text_or_file,
)

__all__ = [
    "FieldProblem",
    "available",
    "check_fields",
    "csv_table",
    "dotted",
    "find_file",
    "got",
    "json_lines",
    "json_object",
    "parse_json",
    "read_json",
    "read_text",
    "read_yaml",
    "repo_dir",
    "text_or_file",
    "validation_message",
]
