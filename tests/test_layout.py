"""The tree keeps the data flow readable: the consumers never import the
composition root back, each role's consumers are listed beside them, the
nickname rules are defined once (with the upload), and the benchmarks use the
test suite's process, HTTP and multipart plumbing instead of copies of it."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Marks of the plumbing tests/processes.py and tests/helpers.py provide: starting a
# Python process (a server), dying with the parent, finding a free port, writing a
# multipart body.  (Tools such as wrk or a profiler are started as they are.)
PLUMBING = ("Popen([sys.executable", "prctl", ".bind((", "Content-Disposition")


def tree(path):
    return ast.parse(path.read_text(), str(path))


def imported_modules(path):
    names = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def defined_functions(path):
    return {node.name for node in ast.walk(tree(path))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def python_files():
    return [path for path in ROOT.rglob("*.py")
            if not {".venv", "data", "build"} & set(path.relative_to(ROOT).parts)]


def test_the_consumers_never_import_the_composition_root():
    for path in (ROOT / "consumers").glob("*.py"):
        assert "server" not in imported_modules(path), path


def test_the_server_starts_the_consumers_of_the_roles_table():
    import server
    from consumers.roles import ROLES
    assert server.ROLES is ROLES and set(ROLES) == {"processor", "notifier"}


def test_python_m_consumers_x_is_the_server_in_that_role():
    result = subprocess.run([sys.executable, "-m", "consumers.notifier", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--role" in result.stdout, result.stderr


def test_the_nickname_rules_are_defined_once_with_the_upload():
    defining = [path.relative_to(ROOT).as_posix() for path in python_files()
                if {"clean_nickname", "has_control_characters"} & defined_functions(path)]
    assert defining == ["uploads.py"]


def test_the_benchmarks_carry_no_copies_of_the_test_plumbing():
    for path in (ROOT / "bench").glob("*.py"):
        text = path.read_text()
        assert [mark for mark in PLUMBING if mark in text] == [], path
