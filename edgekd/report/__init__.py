"""The benchmark report: gates and verdicts (`gates.py`), report.md (`markdown.py`), report.html (`html.py`) and
`edgekd compare` (`compare.py`)."""
