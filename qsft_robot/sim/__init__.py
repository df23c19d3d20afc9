"""MuJoCo tasks. MUJOCO_GL must be chosen before mujoco is imported: EGL renders offscreen on CPU
through Mesa; set MUJOCO_GL=osmesa where EGL is missing."""
import importlib.util
import os

os.environ.setdefault("MUJOCO_GL", "egl")

# Load order workaround. The CUDA builds of torch ship triton, which bundles its own LLVM; Mesa's
# software renderer (llvmpipe, used for headless EGL) loads the system LLVM. If triton is imported
# after an EGL context exists (transformers imports it through torch._dynamo), the process segfaults;
# loading triton first is safe. CPU-only torch has no triton and skips this.
if importlib.util.find_spec("triton") is not None:
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton must not take the simulator down with it
        pass
