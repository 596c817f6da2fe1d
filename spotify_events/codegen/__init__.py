"""Schema tooling: typed Python classes from event schemas, and the schema-evolution gate.

* :mod:`.cli`: the ``spotify-events codegen`` and ``spotify-events schemas check``
  commands, and the diff of two schema directories behind the gate;
* :mod:`.model`: every record and enum the schemas reach, with the class and
  member names they get;
* :mod:`.python`: the Python renderer (frozen dataclasses, ``str`` enums).
"""

from __future__ import annotations

from .cli import SchemaChange, codegen_command, diff_schema_dirs, schemas_group
from .python import generate_python, render_module

__all__ = [
    "SchemaChange",
    "codegen_command",
    "diff_schema_dirs",
    "generate_python",
    "render_module",
    "schemas_group",
]
