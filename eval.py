"""Evaluate CoupAlign: python eval.py --config_path C --ckpt_path K --mindrecord_dir M --eval_splits val,testA"""
from model_utils.config import config_or_exit, run_or_exit

if __name__ == "__main__":
    config = config_or_exit()
    from src.commands.eval import run_eval  # after parsing: a bad flag fails before MindSpore loads
    run_or_exit(run_eval, config)
