import os

# NOTE: must be set before any Triton kernel module is imported (the interpreter is chosen then).
if not os.environ.get("CUDA_VISIBLE_DEVICES") and "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:
        pass

from hypothesis import HealthCheck, settings  # noqa: E402

# NOTE: no deadlines: a shared 2-core machine makes timings noisy. In CI (CI=true) examples are
# derandomized so a submission's run is reproducible; locally they stay random to find new bugs.
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, database=None)
settings.load_profile(os.environ.get("ICECACHE_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
