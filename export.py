"""Export CoupAlign: python export.py --config_path C --ckpt_path K --file_name F --file_format MINDIR"""
from model_utils.config import config_or_exit, run_or_exit

if __name__ == "__main__":
    config = config_or_exit()
    from src.commands.export import run_export  # after parsing: a bad flag fails before MindSpore loads
    run_or_exit(run_export, config)
