"""Segment the object a sentence refers to:
python predict.py --config_path C --ckpt_path K --image IMG --sentence "..." --output out.png [--mindir F]"""
import sys

from model_utils.config import ConfigError, get_config


if __name__ == "__main__":
    try:
        CONFIG = get_config()
    except ConfigError as err:
        sys.exit(f"error: {err}")
    from src.predict_run import main
    sys.exit(main(CONFIG))
