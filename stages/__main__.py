"""`python -m stages --help` lists the stages; `python -m stages STAGE --help` documents one."""

from __future__ import annotations

import importlib

import click

from pipeline.io import unwind_on_sigterm

# stage name -> module defining a click command called `main` (imported only when run)
STAGES = {
    "download": "stages.download",
    "preprocess": "stages.preprocess",
    "train_vae": "stages.train_vae",
    "evaluate_vae": "stages.evaluate_vae",
    "train_classifier": "stages.train_classifier",
    "train_gan": "stages.train_gan",
    "evaluate_samples": "stages.evaluate_samples",
    "export": "stages.export",
    "sample": "stages.sample",
    "bench": "stages.bench",
}


class LazyStages(click.Group):
    """A group whose commands are imported on use, so `--help` and light stages never load torch."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, module in STAGES.items() if importlib.util.find_spec(module) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in STAGES or importlib.util.find_spec(STAGES[name]) is None:
            return None
        return importlib.import_module(STAGES[name]).main


@click.group(cls=LazyStages, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Deep generative models pipeline: the stages dvc.yaml runs, plus `sample` and `bench`."""
    unwind_on_sigterm()


if __name__ == "__main__":
    cli()
