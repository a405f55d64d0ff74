"""check_params stage: validate the whole params.yaml before any other stage runs.

dvc removes a stage's outputs before it runs the stage's command, so a bad value caught inside `train_vae` would
cost the last good run's metrics, cards and plots. This stage depends on every parameter and comes first (the
`download` stage depends on its output), so a bad value stops `dvc repro` and `dvc exp run -S` here, with the
other stages' outputs untouched (`dvc repro -s STAGE` skips the stages upstream of STAGE, this one too). Its output
never changes, so passing the check reruns nothing downstream.
"""

from __future__ import annotations

import click

from pipeline.io import atomic_path
from stages.common import load_params, params_option

CHECKED = "data/checked_params.txt"
MESSAGE = (
    "params.yaml passed the schema in pipeline/config.py. Written by `python -m stages check_params`; this text never "
    "changes, so that only the stages whose own parameters changed rerun after the check.\n"
)


@click.command()
@params_option
def main(params_path: str) -> None:
    """Validate every parameter (one line naming a bad one, exit status 2) and write data/checked_params.txt."""
    load_params(params_path)
    with atomic_path(CHECKED) as tmp:
        tmp.write_text(MESSAGE)
    click.echo(f"check_params: {params_path} is valid")
