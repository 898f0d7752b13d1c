"""Recipes: the schema (`schema.py`), loading YAML and overrides (`load.py`), and the architecture checks
run on a loaded recipe before anything is trained (`architectures.py`)."""
