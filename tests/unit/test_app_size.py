"""``create_app`` assembles the worker, it does not contain it (issue 18): the agents,
tasks, timers and pages live in the services of stream_app/worker/."""

from __future__ import annotations

import ast
from pathlib import Path

import stream_app.worker.app

MAX_LINES = 150


def test_create_app_is_at_most_150_lines():
    tree = ast.parse(Path(stream_app.worker.app.__file__).read_text())
    [create_app] = [node for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == "create_app"]
    assert create_app.end_lineno is not None
    assert create_app.end_lineno - create_app.lineno + 1 <= MAX_LINES


def test_create_app_defines_no_functions_of_its_own():
    """No closures over create_app's locals: the services are classes."""
    tree = ast.parse(Path(stream_app.worker.app.__file__).read_text())
    [create_app] = [node for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == "create_app"]
    nested = [node.name for node in ast.walk(create_app)
              if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
              and node is not create_app and hasattr(node, "name")]
    assert nested == []
