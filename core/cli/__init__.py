"""`forgetless <stage>`: the command line, one module per stage family, built from the config dataclasses."""
