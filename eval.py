"""Evaluate CoupAlign: python eval.py --config_path C --ckpt_path K --mindrecord_dir M --eval_splits val,testA"""
import sys

from model_utils.config import ConfigError, get_config


if __name__ == "__main__":
    try:
        CONFIG = get_config()
    except ConfigError as err:
        sys.exit(f"error: {err}")
    from src.eval_run import main
    sys.exit(main(CONFIG))
