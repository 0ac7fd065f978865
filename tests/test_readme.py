"""Every Python block of README.md runs, so that no snippet can rot.

The blocks are found generically (every fenced ``python`` block, in order) and each runs in a
fresh namespace in a temporary folder. Every ``lightning.Trainer`` they build trains for
:data:`QUICK_EPOCHS` epochs whatever its ``max_epochs`` says: the README's documented rule for its
snippets (see its Development section).
"""

import re
import textwrap
from pathlib import Path

import lightning as L
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK_EPOCHS = 1
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```", re.M | re.S
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, dedented code)`` of every fenced python block of a Markdown text."""
    return [
        (text.count("\n", 0, match.start()) + 1, textwrap.dedent(match.group("code")))
        for match in _FENCE.finditer(text)
    ]


BLOCKS = python_blocks(README.read_text())


def test_blocks_are_found_generically():
    text = "a\n```python\nx = 1\n```\n\n  ```python title\n  y = 2\n  ```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (6, "y = 2\n")]
    assert len(BLOCKS) >= 3


@pytest.fixture
def quick_trainer(monkeypatch):
    """Every Trainer trains for QUICK_EPOCHS epochs (the README's rule for its snippets)."""
    init = L.Trainer.__init__

    def quick_init(self, *args, **kwargs):
        kwargs["max_epochs"] = QUICK_EPOCHS
        init(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", quick_init)


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line, code, tmp_path, monkeypatch, quick_trainer):
    monkeypatch.chdir(tmp_path)  # lightning_logs/ and runs/ of the snippet stay out of the tree
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
