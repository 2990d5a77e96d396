"""Train CoupAlign: python train.py --config_path C --mindrecord_dir M --output_dir O [--resume_ckpt K]"""
import sys

from model_utils.config import ConfigError, get_config


if __name__ == "__main__":
    try:
        CONFIG = get_config()
    except ConfigError as err:
        sys.exit(f"error: {err}")
    from src.trainer import main
    sys.exit(main(CONFIG))
