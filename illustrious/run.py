"""`python -m illustrious.run [group=option ...] [key=value ...]`: compose a config with Hydra and train.

With no arguments it trains the tiny default on synthetic shapes on the CPU. `--help` lists the config
groups, `--cfg job` prints the composed config (fast: nothing heavy is imported until training starts),
`-m` sweeps, locally or with `hydra/launcher=slurm`.
"""

from __future__ import annotations

import sys

from illustrious import preemption

# Flags after which this process trains nothing itself: a sweep (its jobs run elsewhere, or each under its own
# listen()), or Hydra printing help or config. There a SIGTERM must stop the process as usual.
NOT_TRAINING_HERE = ("-m", "--multirun", "-c", "--cfg", "-h", "--help", "--hydra-help", "-i", "--info",
                     "--shell-completion", "-sc")


def listen_if_training(argv: list[str]) -> None:
    """Record stop signals from the start when this command line trains in this process (see preemption)."""
    if not any(a in NOT_TRAINING_HERE or a.startswith(("--cfg=", "--info=", "--shell-completion=")) for a in argv[1:]):
        preemption.listen_from_start()


if __name__ == "__main__":  # the command line (not an import): an early stop signal is kept, not fatal
    listen_if_training(sys.argv)

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from illustrious.config import CONF_DIR  # noqa: E402
from illustrious.errors import reported_config_errors  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    import logging

    from illustrious.train import train

    # Hydra owns logging on the command line (console + run.log); Lightning's package-level console
    # handler would print every line a second time.
    logging.getLogger("lightning").handlers.clear()
    from illustrious.preemption import TrainingInterrupted

    try:
        with reported_config_errors():  # one clear message, no stack trace (HYDRA_FULL_ERROR=1 for the trace)
            metrics, _ = train(cfg)
    except TrainingInterrupted as stop:  # saved, logged and stopped on a signal: never exit 0 (illustrious.preemption)
        sys.exit(stop.exit_code)
    # the value a sweeper optimises, when one is configured
    return metrics.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None


def config_dirs(argv: list[str]) -> list[str]:
    """The folders given with `--config-dir DIR` / `-cd DIR` / `--config-dir=DIR` (the user's own config groups)."""
    dirs = [b for a, b in zip(argv, argv[1:], strict=False) if a in ("--config-dir", "-cd")]
    return dirs + [a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]


def entry() -> None:
    listen_if_training(sys.argv)  # `illustrious-train`; a second call (python -m) changes nothing
    try:
        main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            from illustrious.config import explain_composition_error

            overrides = [a for a in sys.argv[1:] if not a.startswith("-") and a not in config_dirs(sys.argv)]
            overrides += [f"hydra.searchpath=[file://{Path(d).resolve()}]" for d in config_dirs(sys.argv)]
            hint = explain_composition_error(overrides)
            if hint:
                print(hint, file=sys.stderr)
        raise


if __name__ == "__main__":
    entry()
