"""CPU speed and memory of the MindSpore CoupAlign, with the encoders side by side with PyTorch.

    python -m src.tools.benchmark [--config_path default_config.yaml] [--runs 10] [--warmup 2]
        [--json out.json] [--no_torch] [--parts encoders,inference,train] [--train_batch 2]
        [--ms_threads N] [--torch_threads N,1] [--data_dir D] [--data_images 200] [--data_image_size 640x480]
        [--data_batches 20] [--data_batch_size 8] [--<config key> <value> ...]

Parts, each measured in its own child process (so that its peak resident memory is its own):
  encoders   our Swin and BERT (GRAPH_MODE) and the same architectures in PyTorch transformers
             (SwinModel, BertModel; eval, torch.inference_mode) with the same weights, batch 1,
             timed interleaved (MindSpore call, PyTorch call, MindSpore call, ...); a parity check
             of the outputs comes first.
  inference  the whole CoupAlign forward pass at batch 1 (MindSpore only).
  train      one training step (forward, backward, clipping, AdamWeightDecay) at --train_batch.
  stages     (not run by default) the blocks of each Swin stage, MindSpore against PyTorch, to see
             where the time goes.
  data       (not run by default) the input side, on a synthetic set of --data_images images (generated
             in --data_dir, or reused from it): REFER -> MindRecord conversion of train and val in its own
             process (wall time, images/s, sentences/s, peak RSS, size against the JPEGs), then the train
             and eval pipelines (create_dataset at image 480, 1 and 2 workers, samples/s after 2 warm-up
             batches) and a one-thread cv2 decode + resize + normalise loop over the same JPEGs (the
             decode limit). Data settings come from tiny_config.yaml whatever --config_path says.

Threads: MindSpore uses --ms_threads CPU kernel threads (default: all cores). PyTorch is timed at
each count of --torch_threads (default: all cores, then 1): on a CPU shared with other work, OpenMP
threads wait for each other and one PyTorch thread is often several times faster than all cores.

Timings are medians (with quartiles and min/max) of --runs calls after --warmup calls. Each timed call
comes right after --lead_in (default 1) untimed calls of the same function, as in a loop over data:
interleaving alone measures each framework in the wake of the other (PyTorch's OpenMP threads keep
spinning after a call and slowed the next MindSpore BERT call 2-3x), and a pause instead measures a
cold start (MindSpore's BERT, 280 small kernels, takes 50 ms back to back and 100 ms after 0.5 s idle). "first call"
is the wall time of the very first call (graph compilation included); "compile" is that first call
minus the median steady-state call. Peak RSS is ru_maxrss of the child process that ran the part.
A Markdown table goes to stdout, progress to stderr. PyTorch is optional: without torch and
transformers (or with --no_torch) only our network is measured.
"""
from .cli import main, thread_list
from .measure import summarise_times, timing_record

__all__ = ["main", "summarise_times", "thread_list", "timing_record"]
