"""Export CoupAlign: python export.py --config_path C --ckpt_path K --file_name F --file_format MINDIR"""
from model_utils.config import run_entry

if __name__ == "__main__":
    run_entry("src.export_run", "run_export")
