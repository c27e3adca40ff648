"""Results written into benchmarks/README.md by the command that measured them, never by hand.

The README marks each results file's place with `<!-- results:NAME -->` ... `<!-- /results:NAME -->`;
`update_readme(NAME, text)` replaces what lies between with a link to `results/NAME.md` and its text.
A README without the markers for NAME is left alone.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def update_readme(name: str, text: str, readme: Path = README) -> bool:
    """Put `text` (a results file's markdown, its title dropped) between NAME's markers; True if they exist."""
    if not readme.is_file():
        return False
    body = "\n".join(line for line in text.strip().splitlines() if not line.startswith("# "))
    link = f"From [results/{name}.md](results/{name}.md), written by its command:"
    block = f"<!-- results:{name} -->\n{link}\n\n{body.strip()}\n<!-- /results:{name} -->"
    pattern = re.compile(rf"<!-- results:{re.escape(name)} -->.*?<!-- /results:{re.escape(name)} -->", re.S)
    old = readme.read_text()
    if not pattern.search(old):
        return False
    readme.write_text(pattern.sub(lambda _: block, old))
    return True
