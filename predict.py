"""Segment the object a sentence refers to:
python predict.py --config_path C --ckpt_path K --image IMG --sentence "..." --output out.png [--mindir F]"""
from model_utils.config import run_entry

if __name__ == "__main__":
    run_entry("src.predict_run", "predict")
