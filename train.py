"""Train CoupAlign: python train.py --config_path C --mindrecord_dir M --output_dir O [--resume_ckpt K]"""
from model_utils.config import run_entry

if __name__ == "__main__":
    run_entry("src.trainer", "train")
