"""What policy.launch.py and sim.launch.py share: launch ends with its nodes, non-zero when one failed."""
from launch.actions import EmitEvent, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown


def end_launch_on_exit(event, context):
    """End launch when a node exits: shut down cleanly after status 0, raise (non-zero exit) otherwise."""
    if event.returncode != 0:
        raise RuntimeError(f"{event.action.name} exited with status {event.returncode} (see its log above)")
    return [EmitEvent(event=Shutdown(reason=f"{event.action.name} finished"))]


def end_launch_with(*nodes) -> list:
    """Event handlers that end launch (see end_launch_on_exit) when any of `nodes` exits."""
    return [RegisterEventHandler(OnProcessExit(target_action=n, on_exit=end_launch_on_exit)) for n in nodes]
