"""The README and docs/ stay true: links resolve, `make` targets exist, the API page matches the OpenAPI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.app import create_app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")
HEADING = re.compile(r"^#+\s+(.+)$", re.MULTILINE)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # code blocks hold no links
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z]+://|^mailto:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md":
            anchors = {_anchor(h) for h in HEADING.findall(target.read_text())}
            if anchor not in anchors:
                broken.append(link)
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_stays_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300
    for page in ("api", "operations", "deploy", "training", "performance"):
        assert f"docs/{page}.md" in "\n".join(lines)


def test_every_make_command_in_the_docs_is_a_makefile_target() -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named = {t for page in PAGES for t in re.findall(r"(?:^|`)make ([a-z][\w-]*)", page.read_text(), re.MULTILINE)}
    assert {"serve", "test"} <= named
    assert named <= targets, f"not in the Makefile: {sorted(named - targets)}"


def _documented_parameters() -> dict[str, set[str]]:
    """docs/api.md's parameter table: name -> the endpoints it lists ("all three" for every inference one)."""
    table = (ROOT / "docs" / "api.md").read_text().split("| Parameter | Endpoints |", 1)[1].split("\n\n", 1)[0]
    documented: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `(\w+)` \| ([^|]+) \|", table, re.MULTILINE):
        name, where = row
        paths = {"/segment", "/detect", "/instances"} if "all three" in where else set(re.findall(r"`(/\w+)`", where))
        documented[name] = paths
    return documented


def test_api_page_lists_the_endpoints_and_parameters_the_openapi_document_has() -> None:
    spec = create_app().openapi()
    api_page = (ROOT / "docs" / "api.md").read_text()
    for path, operations in spec["paths"].items():
        for method in operations:
            assert f"`{method.upper()} {path}`" in api_page, f"{method.upper()} {path} is not in docs/api.md"
    served: dict[str, set[str]] = {}
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    served.setdefault(parameter["name"], set()).add(path)
    assert _documented_parameters() == served
