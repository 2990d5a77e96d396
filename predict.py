"""Segment the object a sentence refers to:
python predict.py --config_path C --ckpt_path K --image IMG --sentence "..." --output out.png [--mindir F]"""
from model_utils.config import config_or_exit, run_or_exit

if __name__ == "__main__":
    config = config_or_exit()
    from src.commands.predict import predict  # after parsing: a bad flag fails before MindSpore loads
    run_or_exit(predict, config)
