"""Entry point: `python train.py [group=preset ...] [key=value ...]` (Hydra). See README.md."""

import hydra
from omegaconf import DictConfig

from tikmix.cli import hydra_cli
from tikmix.mixer import register_configs
from tikmix.run import main as run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    return run_main(cfg)


if __name__ == "__main__":
    register_configs()  # the schemas conf/'s presets name (every mixer's dataclass among them), the help's mixers
    hydra_cli(main)  # = main(), with Hydra's config errors (unknown preset or key) as one "error:" line
