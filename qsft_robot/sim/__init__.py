"""MuJoCo tasks. MUJOCO_GL must be chosen before mujoco is imported: EGL renders offscreen on CPU
through Mesa; set MUJOCO_GL=osmesa where EGL is missing."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
