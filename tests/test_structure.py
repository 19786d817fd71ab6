"""The package stays easy to find one's way in: small modules, short positional signatures.

A module over 300 lines has usually grown a second job; a public function taking more than six
positional parameters, an option passed by position, or two neighbouring numbers or strings
(`max_length, doc_stride`) are calls whose meaning only their order tells, and that a swap breaks
silently.
"""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "qa_distill"
MODULES = sorted(PACKAGE.rglob("*.py"))  # sub-packages too
MAX_LINES = 300
MAX_POSITIONAL = 6
# the loss's signature is the formula's: (student_start, ..., temperature, alpha), documented as such;
# a setting reads as a dataclass field does, `setting(32, "batch size")`, on every line of config.py
NAMED_SIGNATURES = {"distillation_loss", "setting"}
SCALARS = {"int", "float", "str", "bool"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_300_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def _public_functions(tree: ast.Module):
    """(class name or None, function) for module-level functions and methods of module-level
    classes whose names do not start with _, and the constructors of public classes."""
    for node in tree.body:
        owner = node.name if isinstance(node, ast.ClassDef) else None
        for member in node.body if owner else [node]:
            if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef) and (
                not member.name.startswith("_") or (member.name == "__init__" and not owner.startswith("_"))
            ):
                yield owner, member


def _positional(function: ast.FunctionDef) -> list[ast.arg]:
    return [a for a in function.args.posonlyargs + function.args.args if a.arg not in ("self", "cls")]


def _overrides(path: Path, owner: str | None, name: str) -> bool:
    """A method a base class declares (a Trainer or callback hook, a PythonModel's predict): its
    signature is the base class's."""
    if owner is None or name == "__init__":
        return False
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    cls = getattr(importlib.import_module(".".join(parts)), owner)
    return any(name in vars(base) for base in cls.__mro__[1:])


def _scalar(argument: ast.arg) -> str | None:
    """The scalar type of a parameter annotated `int`, `float | None`, ... (else None)."""
    text = ast.unparse(argument.annotation).replace(" | None", "") if argument.annotation else ""
    return text if text in SCALARS else None


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_public_function_takes_more_than_6_positional_parameters(path):
    too_long = []
    for _, function in _public_functions(ast.parse(path.read_text())):
        positional = [a.arg for a in _positional(function)]
        if len(positional) > MAX_POSITIONAL and function.name not in NAMED_SIGNATURES:
            too_long.append(f"{function.name}({', '.join(positional)})")
    assert not too_long, f"make the rest keyword-only (*): {too_long}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_public_parameters_with_defaults_are_keyword_only(path):
    by_position = []
    for owner, function in _public_functions(ast.parse(path.read_text())):
        defaults = len(function.args.defaults)
        if defaults and function.name not in NAMED_SIGNATURES and not _overrides(path, owner, function.name):
            by_position.append(f"{function.name}: {[a.arg for a in _positional(function)[-defaults:]]}")
    assert not by_position, f"make these keyword-only (*): {by_position}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_neighbouring_parameters_of_one_scalar_type_are_keyword_only(path):
    """Past the first two parameters, a number or string right after one of its own type is
    keyword-only: `build_features(split, tokenizer, max_length=256, doc_stride=128)`."""
    swappable = []
    for owner, function in _public_functions(ast.parse(path.read_text())):
        if function.name in NAMED_SIGNATURES or _overrides(path, owner, function.name):
            continue
        positional = _positional(function)
        for before, argument in zip(positional[1:], positional[2:], strict=False):
            if _scalar(argument) and _scalar(argument) == _scalar(before):
                swappable.append(f"{function.name}: {before.arg}, {argument.arg}")
    assert not swappable, f"make the second of each keyword-only (*): {swappable}"


def test_the_checks_see_the_modules_of_every_sub_package():
    seen = {str(p.relative_to(PACKAGE)) for p in MODULES}
    assert {"inference/predictor.py", "training/runs.py", "search/study.py", "cli.py"} <= seen
    assert {p.parent.name for p in MODULES} >= {"data", "training", "inference", "speedtest", "search", "tracking"}
