"""The README and docs/ as a newcomer meets them: short, every link resolves (files and GitHub's heading anchors),
and every command the README shows parses as written (in this process, nothing trains)."""

import re
import shlex
from importlib import import_module
from pathlib import Path

import pytest

import runner

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.*)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_short():
    assert (ROOT / "README.md").stat().st_size < 15_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target}"


def readme_commands() -> list[list[str]]:
    """Each command in the README's bash blocks, split into words, comments and `&&` chains apart."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = []
    for line in "\n".join(blocks).splitlines():
        for command in line.split("#")[0].split("&&"):
            if command.strip():
                commands.append(shlex.split(command))
    return commands


def test_every_readme_command_parses():
    copies = {}  # cp algorithms/a.py algorithms/b.py: b parses as a does
    checked = 0
    for words in readme_commands():
        if words[0] == "cp":
            copies[Path(words[2]).stem] = Path(words[1]).stem
        elif words[:2] == ["python", "-m"]:
            assert words[2] == "pytest", words
        elif words[0] == "pip":
            assert words == ["pip", "install", "-r", "requirements.txt"], words
        elif words[1].startswith("algorithms/"):
            name = Path(words[1]).stem
            module = import_module(f"algorithms.{copies.get(name, name)}")
            runner.parse_config(module.Config, module.PRESETS, words[2:])
            checked += 1
        elif words[1] == "scripts/reproduce.py":
            reproduce = import_module("scripts.reproduce")
            figure = next((w for w in words[2:] if not w.startswith("-") and w in reproduce.REGISTRY), None)
            assert figure or "--list" in words, words
            scale = words[words.index("--scale") + 1] if "--scale" in words else "cpu"
            assert reproduce.REGISTRY[figure].runs(scale) if figure else True
            checked += 1
        else:
            assert (ROOT / words[1]).exists(), words
            checked += 1
    assert checked >= 8


# Words of how the project is developed, which a reader of the project cannot follow: the project speaks of itself.
PROCESS_WORDS = re.compile(r"\.\./shared|the issue|issue \d+|issue's|this session|the reference sheet|"
                           r"\blent\b|no gpu has been", flags=re.I)
SOURCES = [*PAGES, ROOT / "runner.py", ROOT / "runlog.py", *sorted((ROOT / "algorithms").glob("*.py")),
           *sorted((ROOT / "envs").glob("*.py")), *sorted((ROOT / "scripts").glob("*.py"))]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_project_speaks_of_itself_only(path):
    """No path outside the repository (../shared) and no words of the development process ("the issue",
    "this session", "the reference sheet", "lent") in the README, docs/ and the code a user reads."""
    found = [f"{path.name}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
             if PROCESS_WORDS.search(line)]
    assert not found, "\n".join(found)
