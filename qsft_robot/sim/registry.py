"""Task names used by configs and the CLI."""
from __future__ import annotations

TASKS = {
    "arm_reach": ("arm", {"kind": "reach"}),
    "arm_push": ("arm", {"kind": "push"}),
    "arm_pick_place": ("arm", {"kind": "pick_place"}),
    "base_goto": ("base", {}),
    # one fixed instruction (the red object): the offline-RL benchmark's tasks. A small model trained on a
    # CPU budget does not learn to bind a colour word to an image region (models/vlm_adapter.py, the
    # image_position probe); with the target fixed, what is left to learn is where it is
    "arm_reach_red": ("arm", {"kind": "reach", "target": "red"}),
    "base_goto_red": ("base", {"target": "red"}),
    # the same with the objects' positions in the state: algorithm and perception judged apart
    "arm_reach_red_oracle": ("arm", {"kind": "reach", "target": "red", "oracle_state": True}),
    "base_goto_red_oracle": ("base", {"target": "red", "oracle_state": True}),
    # language-conditioned: a random target per episode, named in a sentence from the logged phrasing set;
    # *_unseen names it in held-out sentences and synonyms (sim/phrasings.py). Every object's position is in the
    # state, so the instruction is the only thing that says which one to go to, and perception is not judged
    "arm_reach_lang": ("arm", {"kind": "reach", "oracle_state": True, "phrasings": "seen"}),
    "arm_reach_lang_unseen": ("arm", {"kind": "reach", "oracle_state": True, "phrasings": "unseen"}),
    "base_goto_lang": ("base", {"oracle_state": True, "phrasings": "seen"}),
    "base_goto_lang_unseen": ("base", {"oracle_state": True, "phrasings": "unseen"}),
}


def make_task(name: str, **kw):
    """A task by name: the built-in MuJoCo tasks above, `metaworld/<env-name>` (the metaworld extra) or
    `ogbench/<name>` (the ogbench extra)."""
    if name.startswith("metaworld/"):
        from qsft_robot.sim.metaworld_tasks import make_metaworld_task
        return make_metaworld_task(name, **kw)
    if name.startswith("ogbench/"):
        from qsft_robot.sim.ogbench_tasks import make_ogbench_task
        return make_ogbench_task(name, **kw)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}, metaworld/<env-name> or "
                         "ogbench/<name>")
    family, defaults = TASKS[name]
    if family == "arm":
        from qsft_robot.sim.arm import ArmTask
        return ArmTask(**{**defaults, **kw})
    from qsft_robot.sim.mobile_base import MobileBaseTask
    return MobileBaseTask(**{**defaults, **kw})
