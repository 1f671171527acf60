"""The HTML and Markdown reports: a table of contents, one collapsible section per experiment."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from nearopt.pipeline import reproduce

SMALL = {"sizes": [100, 1000], "seeds": 2}


class _Sections(HTMLParser):
    """The ``<details class="experiment">`` sections (id, open) and the contents' links."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[tuple[str, bool]] = []
        self.links: list[str] = []
        self._in_toc = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "details" and a.get("class") == "experiment":
            self.sections.append((a["id"], "open" in a))
        if tag == "nav" and a.get("class") == "toc":
            self._in_toc = True
        if tag == "a" and self._in_toc:
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "nav":
            self._in_toc = False


def test_contents_link_every_section_and_a_failing_one_is_open(tmp_path):
    passing = reproduce(["selftest"], overrides={"selftest": SMALL}, out=tmp_path / "a", jobs=1, quiet=True)
    failing = reproduce(["selftest"], overrides={"selftest": {**SMALL, "shift": 1.0}}, out=tmp_path / "b", jobs=1, quiet=True)
    assert passing.passed and not failing.passed
    for study, opened in ((passing, False), (failing, True)):
        page = _Sections()
        page.feed(study.paths["html"].read_text())
        assert page.sections == [("exp-selftest", opened)]
        assert page.links == ["#exp-selftest", "#provenance"]
        markdown = study.paths["markdown"].read_text()
        anchor = re.search(r"^1\. \[selftest\]\(#([\w-]+)\)", markdown, re.M)
        heading = "selftest — PASS" if study.passed else "selftest — FAIL"
        assert anchor and f"## {heading}" in markdown
        assert anchor.group(1) == re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
