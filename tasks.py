"""What `invoke` runs in the repository: the tasks in memuse_kit/tasks.py, which the installed
`memuse-kit` command runs too."""

from memuse_kit.tasks import namespace as ns

__all__ = ["ns"]
