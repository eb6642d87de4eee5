"""Entry point: `python train.py [group=preset ...] [key=value ...]` (Hydra). See README.md."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from tikmix.run import main as run_main

    return run_main(cfg)


if __name__ == "__main__":
    from tikmix.config import register_configs
    from tikmix.errors import hydra_cli

    register_configs()  # the schemas conf/'s presets name (tikmix/config.py, every mixer's dataclass)
    hydra_cli(main)  # = main(), with Hydra's config errors (unknown preset or key) as one "error:" line
