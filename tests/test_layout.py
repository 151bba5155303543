"""The house rules that keep the code readable, checked on the source (docs/architecture.md explains the layout).

- The Hub payload is exactly the files `save_pretrained` copies: modeling_alibi.py, configuration_alibi.py and
  what their relative imports reach, found the way transformers' remote-code loader finds them.
- Nothing in the payload imports the tooling: imports point one way, tooling -> payload (what else the payload
  may import is checked in test_remote_code.py).
- No payload module is over 500 lines, and no function body anywhere in the package is over 60 lines.
"""

import ast
import re
from pathlib import Path

import pytest

from modeling_alibi.hub import PAYLOAD

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_alibi"
MAX_PAYLOAD_LINES = 500
MAX_FUNCTION_LINES = 60


def relative_imports(path: Path) -> set[str]:
    """Sibling modules a file imports, with the two patterns of transformers.dynamic_module_utils."""
    text = path.read_text()
    names = re.findall(r"^\s*import\s+\.(\S+)\s*$", text, flags=re.MULTILINE)
    names += re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE)
    return {name.split(".")[0] + ".py" for name in names}


def test_payload_is_the_import_closure_of_the_model_and_config():
    found, todo = set(), ["modeling_alibi.py", "configuration_alibi.py"]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(relative_imports(PACKAGE / name))
    assert found == set(PAYLOAD)


@pytest.mark.parametrize("name", PAYLOAD)
def test_payload_modules_stay_small(name):
    lines = len((PACKAGE / name).read_text().splitlines())
    assert lines <= MAX_PAYLOAD_LINES, f"{name} has {lines} lines; split it by concern"


def function_bodies(path: Path):
    """(name, line, body lines) per function: from the first statement after the docstring to the end."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            yield node.name, node.lineno, node.end_lineno - body[0].lineno + 1


def test_no_function_is_longer_than_a_screen():
    long = [
        f"{path.relative_to(PACKAGE)}:{line} {name} ({length} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, line, length in function_bodies(path)
        if length > MAX_FUNCTION_LINES
    ]
    assert not long, long
