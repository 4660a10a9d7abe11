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


import contextlib  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402


def _mount(target, options):
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True, text=True)
    return done.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size="1m", readonly=False)``: a real tmpfs mounted in ``tmp_path`` (unmounted at teardown),
    or ``None`` where this process cannot mount (not root, no ``mount``): callers fall back or skip."""
    mounted = []

    def make(size="1m", readonly=False, name="mnt"):
        target = tmp_path / f"{name}{len(mounted)}"
        target.mkdir()
        if not _mount(target, f"size={size}" + (",ro" if readonly else "")):
            return None
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def readonly_dir(tmpfs, tmp_path):
    """A directory nobody (root included) can create files in: a read-only tmpfs when mounting works,
    else a ``chmod 0o500`` directory when not root; skips where neither holds."""
    target = tmpfs(readonly=True, name="ro")
    if target is not None:
        return target
    if os.geteuid() != 0:
        target = tmp_path / "ro"
        target.mkdir(mode=0o500)
        return target
    pytest.skip("root without mount: no directory is read-only")
