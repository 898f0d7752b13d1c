"""Generate docs/report.schema.json, the JSON Schema of report.json, from edgekd.report.schema.Report.

python scripts/report_schema.py          # rewrite docs/report.schema.json
python scripts/report_schema.py --check  # exit 1 when the committed file is not what Report generates
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgekd.report.schema import report_json_schema

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO / "docs" / "report.schema.json"


def render() -> str:
    return json.dumps(report_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    want = render()
    if "--check" in argv:
        have = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.is_file() else ""
        if have != want:
            print(
                f"{SCHEMA_FILE.relative_to(REPO)} is out of date: run python scripts/report_schema.py",
                file=sys.stderr,
            )
            return 1
        return 0
    SCHEMA_FILE.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_FILE.write_text(want, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
