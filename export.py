"""Export CoupAlign: python export.py --config_path C --ckpt_path K --file_name F --file_format MINDIR"""
import sys

from model_utils.config import ConfigError, get_config


if __name__ == "__main__":
    try:
        CONFIG = get_config()
    except ConfigError as err:
        sys.exit(f"error: {err}")
    from src.export_run import main
    sys.exit(main(CONFIG))
