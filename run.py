"""Hydra entry point: one trial (``python run.py ...``) or a sweep (``python run.py -m ...``)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from search_space.config import register_configs, validate_search_space

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    validate_search_space(cfg)
    print(OmegaConf.to_yaml(cfg))


if __name__ == "__main__":
    main()
