"""Device and data-parallel set-up shared by the entry scripts."""
import ctypes
import os

import mindspore as ms

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")
# The library each accelerator's MindSpore plugin cannot start without, and what provides it.
DEVICE_LIBRARIES = {
    "GPU": ("libcuda.so.1", "the NVIDIA driver (libcuda.so.1) is not installed or not on LD_LIBRARY_PATH; "
                            "MindSpore 2.10's GPU plugin also needs the CUDA 11 runtime, cuBLAS and cuDNN 8"),
    "Ascend": ("libascendcl.so", "the Ascend CANN toolkit (libascendcl.so) is not installed or its set_env.sh "
                                 "was not sourced"),
}


def launched_in_parallel():
    """True when msrun (or an Ascend rank table) started this process as one of several ranks."""
    return int(os.getenv("MS_WORKER_NUM", os.getenv("RANK_SIZE", "1"))) > 1


def select_device(target, device_id):
    """ms.set_device, with a one-line ValueError instead of MindSpore's page of logs and C++ stack when the
    machine lacks what the target needs."""
    if target in DEVICE_LIBRARIES:
        library, missing = DEVICE_LIBRARIES[target]
        try:
            ctypes.CDLL(library)
        except OSError:
            raise ValueError(f"--device_target {target}: {missing}; this MindSpore {ms.__version__} can run here "
                             "with --device_target CPU") from None
    try:
        ms.set_device(target, device_id)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0]
        raise ValueError(f"--device_target {target}: MindSpore {ms.__version__} cannot use it here: {reason}") from None


def setup_context(config, allow_parallel=False):
    """GRAPH_MODE on the configured device; data parallel when launched by msrun. -> (rank_id, group_size)"""
    if config.device_target not in DEVICE_TARGETS:
        raise ValueError(f"device_target must be one of {DEVICE_TARGETS}, got '{config.device_target}'")
    ms.set_context(mode=ms.GRAPH_MODE)
    device_id = int(os.getenv("DEVICE_ID", config.device_id))
    select_device(config.device_target, device_id)
    ms.set_seed(config.seed)
    if not (allow_parallel and launched_in_parallel()):
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init
    init()
    rank_id, group_size = get_rank(), get_group_size()
    # The launcher names a rank that dies without a message by this pid (scripts/msrun_job.sh).
    print(f"rank {rank_id} of {group_size}: pid {os.getpid()}", flush=True)
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=group_size)
    return rank_id, group_size
