"""A Foundry Messages API emulator on loopback, for the demo, the tests, and users' offline tests."""

from .app import DEFAULT_DEPLOYMENTS, FAULT_HEADER, create_app
from .server import EmulatorServer

__all__ = ["DEFAULT_DEPLOYMENTS", "FAULT_HEADER", "EmulatorServer", "create_app"]
