"""The distill stage (`stage.py`) and its parts: the transfer set (`augment.py`, `unlabeled.py`), teacher
labelling (`labelling.py`), the student's shape (`structured_prune.py`, `budget.py`), losses (`losses.py`,
`intermediate.py`) and the hyper-parameter search (`search.py`)."""
