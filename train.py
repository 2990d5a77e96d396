"""Train CoupAlign: python train.py --config_path C --mindrecord_dir M --output_dir O [--resume_ckpt K]"""
from model_utils.config import config_or_exit, run_or_exit

if __name__ == "__main__":
    config = config_or_exit()
    from src.commands.train import train  # after parsing: a bad flag fails before MindSpore loads
    run_or_exit(train, config)
