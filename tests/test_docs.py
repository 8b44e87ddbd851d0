"""The model card and README point only at files that exist (figures, results, commands' outputs)."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", ["README.md", "docs/README.md", "docs/experiment.md"])
def test_relative_links_resolve(doc):
    path = os.path.join(ROOT, doc)
    text = open(path, encoding="utf-8").read()
    targets = [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if t and not os.path.exists(os.path.join(os.path.dirname(path), t))]
    assert targets, f"no relative link found in {doc}"
    assert not missing, f"{doc} links to missing files: {missing}"
