"""The `edgekd` command line: `app.py` (typer commands), `predict.py` (`edgekd predict`), `scaffold.py`
(`edgekd init`). The commands are thin: each calls a plain function of the package."""
