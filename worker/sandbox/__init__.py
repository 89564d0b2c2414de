"""The worker's OS sandbox: layers it applies to itself before any plugin is imported.

Python cannot sandbox Python in-process, so every layer here is the kernel's.
`worker.sandbox.launcher.apply_sandbox` is the one entry point; each layer
lives in its own module and `policy` says which ones a config asks for.
See docs/SECURITY.md for the threat model.
"""

from worker.sandbox.launcher import SandboxError, SandboxReport, apply_sandbox
from worker.sandbox.policy import Policy, resolve_policy

__all__ = ["Policy", "SandboxError", "SandboxReport", "apply_sandbox", "resolve_policy"]
