"""Tasks: one per module, each registered by name."""

from moebench.registry import Registry
from moebench.tasks.base import Batch, Task, TaskConfig

TASKS: Registry[Task] = Registry("task", __name__)

__all__ = ["TASKS", "Batch", "Task", "TaskConfig"]
