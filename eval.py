"""Evaluate CoupAlign: python eval.py --config_path C --ckpt_path K --mindrecord_dir M --eval_splits val,testA"""
from model_utils.config import run_entry

if __name__ == "__main__":
    run_entry("src.eval_run", "run_eval")
